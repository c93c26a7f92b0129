"""Who may change the queue from the dashboard, and the headers every response carries.

Rules (README, "Web dashboard"):
- read-only mode (a non-loopback address without a token): every POST is refused (403);
- with a token, a POST needs it: `Authorization: Bearer TOKEN`, or the session cookie that a
  visit to `/?token=TOKEN` sets; without it, 401;
- a POST that relies on the session cookie (not a Bearer header) must come from our own
  origin (its Origin, or else its Referer, names this host) and carry the session's CSRF token
  (form field `csrf_token` or header `X-CSRF-Token`); otherwise 403;
- bound to loopback, requests must name a loopback host (a DNS-rebinding defence).
"""
from __future__ import annotations

import hmac
import ipaddress
import secrets
from typing import Any
from urllib.parse import urlencode, urlsplit

from flask import Flask, Response, abort, redirect, request, session

CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}


class Refused(Exception):
    """A changing request that the rules refuse; becomes `status` with `message`."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class Guard:
    """The rules above, installed on an app as request hooks."""

    def __init__(self, token: str | None, read_only: bool, loopback_only: bool):
        self.token = token or None
        self.read_only = read_only
        self.loopback_only = loopback_only

    def install(self, app: Flask) -> None:
        app.before_request(self.before)
        app.after_request(self.after)
        app.jinja_env.globals.update(csrf_token=csrf_token, csrf_field=CSRF_FIELD)

    # -- what a request may do -----------------------------------------------------------
    def can_change(self) -> bool:
        """Whether this browser session may use the changing actions (shown on pages)."""
        if self.read_only:
            return False
        return self.token is None or bool(session.get("auth"))

    def before(self) -> Any:
        if self.loopback_only and not _loopback_host(_hostname(request.host)):
            abort(400, description=f"unexpected Host header '{request.host}': "
                                   "this dashboard answers on a loopback address only")
        if request.method == "GET" and "token" in request.args:
            return self._log_in()
        if request.method not in SAFE_METHODS:
            self.check_change()
        return None

    def _log_in(self) -> Response:
        """`/?token=...`: a matching token marks the session; the token leaves the address bar."""
        given = request.args.get("token", "")
        if self.token is None or not _same(given, self.token):
            abort(403, description="wrong token" if self.token else "this dashboard has no token")
        session.clear()
        session["auth"] = True
        session[CSRF_FIELD] = secrets.token_urlsafe(32)
        rest = [(k, v) for k, v in request.args.items(multi=True) if k != "token"]
        return redirect(request.path + (f"?{urlencode(rest)}" if rest else ""), code=303)

    def check_change(self) -> None:
        """Raises Refused unless this request may change the queue."""
        if self.read_only:
            raise Refused(403, "the dashboard is read-only: it listens on a non-loopback address "
                               "without a token (start it with --token to allow changes)")
        bearer = _bearer()
        if bearer is not None and self.token is not None:
            if not _same(bearer, self.token):
                raise Refused(401, "wrong bearer token")
            return  # not an ambient credential: a cross-site page cannot send it
        if self.token is not None and not session.get("auth"):
            raise Refused(401, "this action needs the token: send 'Authorization: Bearer TOKEN' "
                               "or open /?token=TOKEN once")
        origin = request.headers.get("Origin") or request.headers.get("Referer")
        if not origin or urlsplit(origin).netloc != request.host:
            raise Refused(403, "cross-origin request refused (Origin or Referer must name this dashboard)")
        expected = session.get(CSRF_FIELD)
        given = request.headers.get(CSRF_HEADER) or request.form.get(CSRF_FIELD, "")
        if not expected or not given or not _same(given, expected):
            raise Refused(403, "missing or wrong CSRF token (reload the page and try again)")

    # -- every response ------------------------------------------------------------------
    @staticmethod
    def after(response: Response) -> Response:
        for name, value in HEADERS.items():
            response.headers.setdefault(name, value)
        if not request.path.startswith("/static/"):
            response.headers.setdefault("Cache-Control", "no-store")
        return response


def csrf_token() -> str:
    """This session's CSRF token, made on first use (pages put it in forms and a meta tag)."""
    token = session.get(CSRF_FIELD)
    if not token:
        token = session[CSRF_FIELD] = secrets.token_urlsafe(32)
    return str(token)


def _bearer() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def _loopback_host(name: str) -> bool:
    """A Host header a loopback dashboard answers: a loopback name, or a loopback address written
    out (127.0.0.2 when it was started on that). A name that merely resolves to one is refused:
    that is what DNS rebinding sends."""
    if name.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _hostname(host: str) -> str:
    """'127.0.0.1:8080' -> '127.0.0.1'; '[::1]:8080' -> '::1'."""
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host
