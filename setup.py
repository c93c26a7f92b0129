from setuptools import find_packages, setup

setup(
    name="queuectl",
    version="0.1.0",
    description="A background job queue for shell commands, with retries, backoff and a DLQ",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["queuectl", "queuectl.*"]),
    # The package sits at the root: an editable install is then one path in a .pth file, not an
    # import hook that every `queuectl` call and worker would load at start-up (15-20 ms each).
    package_dir={"": "."},
    python_requires=">=3.9",
    install_requires=["click>=8.1", "tabulate>=0.9", "filelock>=3.12"],
    extras_require={
        "redis": ["redis>=5"],
        "dev": ["pytest>=7", "pytest-xdist>=3", "ruff", "prometheus_client>=0.17", "playwright>=1.40"],
        "dashboard": ["flask>=2.3", "waitress>=2.1"],
    },
    package_data={"queuectl.dashboard": ["templates/*.html", "static/*.css", "static/*.js", "static/*.svg"]},
    entry_points={"console_scripts": ["queuectl=queuectl.cli:main"]},
)
