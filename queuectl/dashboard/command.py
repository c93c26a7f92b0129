"""`queuectl dashboard`: serves the web dashboard with waitress until Ctrl+C.

Importing this module loads neither Flask nor waitress, so the CLI works without the extra.
"""
from __future__ import annotations

import re
from typing import Any

import click

from ..core.errors import QueuectlError
from ..params import Whole

TOKEN_ENV = "QUEUECTL_DASHBOARD_TOKEN"
# Threads serving requests: a few browsers polling every second need few.
THREADS = 8
MISSING_EXTRA = ("the dashboard needs Flask and waitress: install the dashboard extra: "
                 "pip install -e '.[dashboard]'")


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps the dashboard on this machine (localhost, 127.0.0.0/8, ::1)."""
    if host.strip().lower() in ("localhost", "localhost."):
        return True
    import ipaddress  # this module loads with every CLI call; the dashboard rarely runs
    import socket

    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:  # the short IPv4 forms that inet_aton and so the server take: 127.1, 0x7f.1
        return ipaddress.ip_address(socket.inet_aton(host)).is_loopback
    except (OSError, ValueError):
        return False  # a host name: it may resolve to anything


# Underscores too: not in DNS names, but in names that /etc/hosts or a container network resolve.
_HOST_NAME = re.compile(r"(?=.{1,253}\.?$)[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
                        r"(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?")


def check_host(_ctx: Any, _param: Any, host: str) -> str:
    """An IP address or a host name, refused as a usage error before anything is printed."""
    import ipaddress

    try:
        ipaddress.ip_address(host[1:-1] if host.startswith("[") and host.endswith("]") else host)
        return host
    except ValueError:
        pass
    if not _HOST_NAME.fullmatch(host):
        raise click.BadParameter(f"{host!r} is neither an IP address nor a host name")
    return host


def url_of(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, callback=check_host,
              help="Address to listen on.")
@click.option("--port", type=Whole(0, 65535), default=8080, show_default=True,
              help="Port to listen on (0: any free port).")
@click.option("--token", envvar=TOKEN_ENV, metavar="TOKEN",
              help=f"Changing actions (retry, purge) need this token (also ${TOKEN_ENV}).")
@click.pass_obj
def dashboard(app: Any, host: str, port: int, token: str | None) -> None:
    """Serve the web dashboard: live counts, charts, jobs, output, the DLQ, workers.

    Binds 127.0.0.1 unless --host says otherwise. On any other address without --token it is
    read-only. Install it with: pip install -e '.[dashboard]'

    \b
    Examples:
      queuectl dashboard
      queuectl dashboard --port 9000
      QUEUECTL_DASHBOARD_TOKEN=s3cret queuectl dashboard --host 0.0.0.0
    """
    try:
        from waitress import create_server

        from . import create_app
    except ImportError:
        raise QueuectlError(MISSING_EXTRA) from None
    token = token or None
    local = is_loopback(host)
    manager = app.manager
    manager.counts()  # fails here, in one line, if the store cannot be read
    web = create_app(manager, token=token, read_only=not local and token is None, loopback_only=local)
    try:
        server = create_server(web, host=host, port=port, threads=THREADS, ident="queuectl")
    except OSError as e:
        raise QueuectlError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    except ValueError:  # waitress, for a name that does not resolve
        raise QueuectlError(f"cannot listen on {host}:{port}: no such address") from None
    if not local and token is None:
        click.echo(f"Warning: the dashboard listens on {host} without a token: anyone who can reach it "
                   "sees every job and its output; it is read-only (retry and purge are refused). "
                   "Give --token to allow them.", err=True)
    elif not local:
        click.echo("Warning: plain HTTP: the token and job data cross the network unencrypted "
                   "(put a TLS proxy in front).", err=True)
    listening = getattr(server, "effective_listen", None) or [(server.effective_host, server.effective_port)]
    for bound_host, bound_port in listening:
        click.echo(f"Dashboard: {url_of(str(bound_host), int(bound_port))}")
    if token:
        click.echo("Retry and purge need the token: open /?token=TOKEN once, or send 'Authorization: Bearer TOKEN'")
    click.echo("Press Ctrl+C to stop.")
    import signal

    signal.signal(signal.SIGTERM, _interrupt)
    try:
        server.run()  # returns on Ctrl+C or SIGTERM
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    click.echo("Dashboard stopped")


def _interrupt(_signum: int, _frame: Any) -> None:
    """SIGTERM stops the server like Ctrl+C does."""
    raise KeyboardInterrupt
