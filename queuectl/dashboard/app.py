"""The application factory: the pages, the JSON API, the security rules, the error pages."""
from __future__ import annotations

import secrets

from flask import Flask, Response, flash, jsonify, make_response, redirect, render_template, request, url_for
from werkzeug.exceptions import HTTPException

from ..core.errors import (
    ConflictError,
    InvalidStateError,
    JobNotFoundError,
    QueuectlError,
    ValidationError,
)
from ..core.queue import QueueManager
from . import api, pages
from .context import Dashboard, local_path, wants_html
from .security import Guard, Refused

# The HTTP status of each error the queue raises on purpose (anything else is a 500).
STATUS_OF = ((JobNotFoundError, 404), (ValidationError, 400), (InvalidStateError, 409), (ConflictError, 409))
# Request bodies are a CSRF token at most.
MAX_BODY = 16 * 1024


def create_app(manager: QueueManager, token: str | None = None, read_only: bool = False,
               loopback_only: bool = False) -> Flask:
    """The dashboard over `manager`.

    `token`: changing actions need it. `read_only`: changing actions are refused (403).
    `loopback_only`: answer only requests addressed to a loopback host name.
    """
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=secrets.token_bytes(32),  # sessions end with the process
        SESSION_COOKIE_NAME="queuectl_dashboard",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        MAX_CONTENT_LENGTH=MAX_BODY,
        SEND_FILE_MAX_AGE_DEFAULT=300,
    )
    app.json.sort_keys = False  # type: ignore[attr-defined]
    guard = Guard(token, read_only, loopback_only)
    guard.install(app)
    app.extensions["queuectl"] = Dashboard(manager, guard)
    app.register_blueprint(api.blueprint)
    app.register_blueprint(pages.blueprint)
    pages.install_filters(app)
    app.register_error_handler(QueuectlError, _queue_error)
    app.register_error_handler(Refused, _refused)
    app.register_error_handler(HTTPException, _http_error)
    return app


def _error(status: int, message: str) -> Response:
    if wants_html():
        return make_response(render_template("error.html", status=status, message=message), status)
    return make_response(jsonify({"error": message}), status)


def _queue_error(e: QueuectlError) -> Response:
    status = next((code for kind, code in STATUS_OF if isinstance(e, kind)), 500)
    message = " ".join(str(e).split())
    if request.method == "POST" and wants_html():  # a form: back to the page, with the reason
        flash(message, "error")
        return redirect(local_path(request.form.get("next"), url_for("pages.dlq")), code=303)
    return _error(status, message)


def _refused(e: Refused) -> Response:
    response = _error(e.status, e.message)
    if e.status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="queuectl"'
    return response


def _http_error(e: HTTPException) -> Response:
    return _error(e.code or 500, e.description or e.name)
