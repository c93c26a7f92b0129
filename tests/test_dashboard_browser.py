"""The dashboard end to end: the real `queuectl dashboard` server, driven in headless Chromium.

Debian's `chromium` is driven by Playwright's Python package (never `playwright install`). The
tests skip when either is missing, and fail instead when CI is set. They also write the README's
screenshot, docs/dashboard.png.
"""
from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request

import pytest

from queuectl.core.queue import QueueManager
from queuectl.core.storage import get_storage
from queuectl.core.worker import Worker

from conftest import ROOT, queuectl_command

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
XSS = "<script>alert(1)</script>"
SCREENSHOT = ROOT / "docs" / "dashboard.png"
VIEWPORT = {"width": 1280, "height": 800}
# The overview polls every second; a change must show within this long. Generous for a busy
# machine: that the page was not reloaded is what shows the update came live.
LIVE_WITHIN_MS = 10000


def unavailable() -> str | None:
    if not (os.path.exists(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        return f"Debian's chromium is not installed ({CHROMIUM}; apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright's Python package is not installed (pip install playwright)"
    try:
        import flask  # noqa: F401
        import waitress  # noqa: F401
    except ImportError:
        return "the dashboard extra is not installed (pip install -e '.[dashboard]')"
    return None


@pytest.fixture(scope="module")
def browser():
    reason = unavailable()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI is set, so the browser tests must run", pytrace=False)
        pytest.skip(f"browser tests skipped: {reason}")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def run_all(manager: QueueManager) -> None:
    worker = Worker(manager, "worker-1")
    while worker.run_once():
        pass
    worker.unregister()


@pytest.fixture(scope="module")
def store(tmp_path_factory, browser):
    """A store with completed, failed and dead jobs (one of them the XSS job), all run for real."""
    data = tmp_path_factory.mktemp("dashboard") / "queuectl_data"
    manager = QueueManager(get_storage(str(data)))
    manager.enqueue_many([f"echo 'report {i}'; sleep 0.0{i % 10}" for i in range(24)])
    ids = {"retry": manager.enqueue("echo 'fetching'; exit 3", max_retries=0).id,
           "xss": manager.enqueue(f"echo '{XSS}'; echo '{XSS}' >&2; exit 1", max_retries=0).id}
    for i in range(3):
        manager.enqueue(f"echo 'upload {i} failed: disk full' >&2; exit 7", max_retries=0)
    manager.enqueue("make nightly-report", delay="1h")
    run_all(manager)
    manager.storage.close()
    return data, ids


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(store, tmp_path_factory):
    data, _ = store
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUEUECTL")}
    # a relative path, so the page (and the README's screenshot) shows no machine path
    env.update(QUEUECTL_STORAGE_PATH=data.name, PYTHONUNBUFFERED="1")
    log = tmp_path_factory.mktemp("dashboard-log") / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(queuectl_command() + ["dashboard", "--port", str(port)], env=env,
                                stdout=out, stderr=subprocess.STDOUT, cwd=data.parent)
    base = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 15
    while True:
        try:
            with urllib.request.urlopen(base + "api/status", timeout=1) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the dashboard did not start:\n{log.read_text()}")
        time.sleep(0.05)
    yield base, dict(env, QUEUECTL_STORAGE_PATH=str(data))  # for commands run from anywhere
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    assert "Dashboard stopped" in log.read_text()


@pytest.fixture
def page(browser, server):
    """A fresh browser context; any dialog, page error or CSP violation fails the test."""
    context = browser.new_context(viewport=VIEWPORT)
    tab = context.new_page()
    problems: list[str] = []
    tab.on("dialog", lambda d: (problems.append(f"dialog: {d.message}"), d.dismiss()))
    tab.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    tab.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    yield tab
    context.close()
    assert problems == []


def manager_of(store) -> QueueManager:
    return QueueManager(get_storage(str(store[0])))


def test_overview_counts_update_without_a_reload(page, server):
    from playwright.sync_api import expect
    base, env = server
    page.goto(base)
    expect(page).to_have_title("Overview · queuectl")
    pending = page.locator(".cards [data-count=pending]")
    before = int(pending.inner_text())
    page.evaluate("window.__notReloaded = true")
    subprocess.run(queuectl_command() + ["enqueue", "echo 'added while watching'"], env=env, check=True,
                   capture_output=True, timeout=30)
    expect(pending).to_have_text(str(before + 1), timeout=LIVE_WITHIN_MS)
    assert page.evaluate("window.__notReloaded") is True
    expect(page.locator("#live")).to_have_class("live ok")


def test_retry_from_the_dlq_page_moves_the_job_to_pending(page, server, store):
    from playwright.sync_api import expect
    base, _ = server
    job_id = store[1]["retry"]
    page.goto(base + "dlq")
    row = page.locator(f'tr[data-job="{job_id}"]')
    expect(row).to_contain_text("Exit code 3")
    row.get_by_role("button", name="Retry").click()
    expect(page.locator(".flash")).to_have_text(f"Job {job_id} moved from DLQ to pending queue")
    expect(page.locator(f'tr[data-job="{job_id}"]')).to_have_count(0)
    manager = manager_of(store)
    assert manager.storage.get(job_id).state.value == "pending"
    manager.storage.close()


def test_the_xss_job_renders_as_text(page, server, store):
    from playwright.sync_api import expect
    base, _ = server
    job_id = store[1]["xss"]
    for path in ("jobs", "dlq"):
        page.goto(base + path)
        expect(page.locator("td.command code", has_text=XSS).first).to_be_visible()
    page.goto(f"{base}jobs/{job_id}")
    expect(page.locator("pre.command-line")).to_have_text(f"echo '{XSS}'; echo '{XSS}' >&2; exit 1")
    expect(page.locator('pre[data-stream="stdout"]')).to_have_text(XSS + "\n")
    expect(page.locator('pre[data-stream="stderr"]')).to_have_text(XSS + "\n")
    page.wait_for_timeout(300)  # time for a stray script to run, if any had got in
    assert page.evaluate("document.querySelectorAll('script:not([src])').length") == 0


def test_workers_page_and_screenshot(page, server, tmp_path):
    from playwright.sync_api import expect
    base, _ = server
    page.goto(base + "workers")
    expect(page.locator("#managers")).to_contain_text("No worker manager running")
    page.goto(base)
    expect(page.locator("#throughput-chart rect.bar-completed").first).to_be_visible()
    expect(page.locator("#latency-chart rect.bar-p95").first).to_be_visible()
    # the README's picture is rewritten only on request: QUEUECTL_UPDATE_SCREENSHOT=1 make test
    target = SCREENSHOT if os.environ.get("QUEUECTL_UPDATE_SCREENSHOT") else tmp_path / "dashboard.png"
    target.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(target))
    png = target.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) < 400_000
    assert (int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")) == (1280, 800)
