"""One place that turns errors into API answers: ErrorBody JSON with a status a client can act on."""

from __future__ import annotations

import logging

from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException

from bkup import errors
from bkup.catalog.commits import MissingChunksError
from bkup.protocol import ErrorBody
from bkup.server.ratelimit import TooManyAttempts

log = logging.getLogger("bkup.server")

STATUS = (
    (TooManyAttempts, 429),
    (errors.Forbidden, 403),
    (errors.AuthError, 401),
    (errors.NotFound, 404),
    (errors.Conflict, 409),
    (errors.UsageError, 400),
    (errors.IntegrityError, 400),
    (errors.StorageError, 503),
    (errors.ConfigError, 500),
    (errors.BkupError, 400),
)


def status_of(exc: errors.BkupError) -> int:
    return next(code for cls, code in STATUS if isinstance(exc, cls))


def _json(status: int, detail: str, extra: dict | None = None, headers: dict | None = None) -> Response:
    return Response(
        ErrorBody(status_code=status, detail=detail, extra=extra),
        status_code=status,
        media_type=MediaType.JSON,
        headers=headers,
    )


def bkup_error(request: Request, exc: errors.BkupError) -> Response:
    status = status_of(exc)
    if status >= 500:
        log.error("%s %s: %s", request.method, request.url.path, exc)
    extra = {"missing": exc.missing} if isinstance(exc, MissingChunksError) else None
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return _json(status, str(exc), extra, headers)


def http_error(request: Request, exc: HTTPException) -> Response:
    extra = exc.extra if isinstance(exc.extra, dict) else ({"errors": exc.extra} if exc.extra else None)
    return _json(exc.status_code, exc.detail, extra, exc.headers)


def internal_error(request: Request, exc: Exception) -> Response:
    log.exception("internal error on %s %s", request.method, request.url.path)
    return _json(500, "internal server error; the server log has the details")


def _raised_while_decoding_the_body(exc: BaseException) -> bool:
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_name in ("decode_json", "json_extractor", "msgpack_extractor"):
            return True
        tb = tb.tb_next
    return False


def malformed_body(request: Request, exc: Exception) -> Response:
    """Bytes that are not UTF-8, or JSON nested past the decoder's depth: the caller's error (400), not ours.

    litestar turns msgspec's DecodeError into a 400 but lets these two through.
    """
    if _raised_while_decoding_the_body(exc):
        what = "is not UTF-8" if isinstance(exc, UnicodeDecodeError) else "is nested too deeply"
        return _json(400, f"the request body is not valid JSON: it {what}")
    return internal_error(request, exc)


HANDLERS = {
    errors.BkupError: bkup_error,
    HTTPException: http_error,
    UnicodeDecodeError: malformed_body,
    RecursionError: malformed_body,
    Exception: internal_error,
}
