"""One place that turns errors into web answers: a login redirect, a flash message back on the form, or an error page.

- not signed in (or the session ended) → 303 to /login?next=…
- a form refused by a service (bad input, name taken: 400/409) → 303 back to
  the page the form was on, with the message as a flash
- anything else → `error.html` with the status the API would use
  (403 forbidden, 404 not found — also for other users' objects —, 429, 5xx)
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

from litestar import Request, Response
from litestar.exceptions import HTTPException

from bkup import errors
from bkup.server.errors import status_of
from bkup.web import render
from bkup.web.session import clear_session_cookie

log = logging.getLogger("bkup.web")

TITLES = {400: "Bad request", 401: "Please log in", 403: "Not allowed", 404: "Not found", 405: "Not allowed here",
          409: "Conflict", 429: "Too many attempts", 500: "Server error", 503: "Storage unavailable"}


def _back(request: Request) -> str | None:
    """The same-site page a form was posted from (from Referer), if any."""
    referer = request.headers.get("referer")
    if not referer:
        return None
    parts = urlsplit(referer)
    if parts.netloc and parts.netloc != request.url.netloc:
        return None
    if not parts.path.startswith("/") or parts.path.startswith("//"):
        return None
    return parts.path + (f"?{parts.query}" if parts.query else "")


def error_page(request: Request, status: int, message: str) -> Response:
    return render.page(request, "error.html", status=status, status_code=status, title=TITLES.get(status, "Error"), message=message)


def bkup_error(request: Request, exc: errors.BkupError) -> Response:
    status = status_of(exc)
    if status == 401:
        target = request.url.path + (f"?{request.url.query}" if request.url.query and request.method == "GET" else "")
        return render.redirect(
            render.url("/login", next=target if request.method == "GET" and target != "/" else None),
            str(exc) if request.cookies.get("bkup_session") else None,
            kind="error",
            cookies=[clear_session_cookie()],
        )
    if request.method == "POST" and status in (400, 409):
        back = _back(request)
        if back is not None:
            return render.redirect(back, str(exc), kind="error")
    if status >= 500:
        log.error("%s %s: %s", request.method, request.url.path, exc)
    return error_page(request, status, str(exc))


def http_error(request: Request, exc: HTTPException) -> Response:
    detail = exc.detail
    if exc.status_code == 400 and isinstance(exc.extra, list) and exc.extra:
        # Litestar's validation errors: name the parameter.
        first = exc.extra[0]
        if isinstance(first, dict) and first.get("key"):
            detail = f"invalid value for {first['key']!r}: {first.get('message', 'invalid')}"
    return error_page(request, exc.status_code, detail)


def internal_error(request: Request, exc: Exception) -> Response:
    log.exception("internal error on %s %s", request.method, request.url.path)
    return error_page(request, 500, "Something went wrong on the server; its log has the details.")


HANDLERS = {errors.BkupError: bkup_error, HTTPException: http_error, Exception: internal_error}
