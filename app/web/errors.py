"""One error shape for every failure: ``{"error": {"code": "unknown_symbol", "message": "..."}}``.

Routes raise ``ApiError``; the handlers registered here turn it, Quart's own HTTP errors (404, 405, 413 ...) and
any unexpected exception into that shape. No stack trace ever reaches a client: unexpected exceptions are logged
with their traceback and answered with a bare 500 ``internal_error``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping

import orjson
from quart import Quart, Response, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed

log = logging.getLogger(__name__)

FEED_PATH = "/ws"


class ApiError(Exception):
    """A client error with its HTTP status, a stable machine-readable ``code`` and a human message."""

    def __init__(self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


def error_body(code: str, message: str) -> bytes:
    return orjson.dumps({"error": {"code": code, "message": message}})


def error_response(status: int, code: str, message: str) -> Response:
    return Response(error_body(code, message), status=status, content_type="application/json")


# Codes for Quart's (werkzeug's) own HTTP errors; any other gets its name in snake case.
_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def _snake_case(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "error"


async def _api_error(error: ApiError) -> Response:
    response = error_response(error.status, error.code, error.message)
    response.headers.update(error.headers)
    return response


async def _http_error(error: HTTPException) -> Response:
    status = error.code or 500
    code = _HTTP_CODES.get(status) or _snake_case(error.name)
    if status == 400 and request.path == FEED_PATH:
        code = "websocket_required"
        message = f"{FEED_PATH} is a WebSocket endpoint: connect with a WebSocket client (e.g. python -m websockets)"
    elif status == 404:
        message = f"no route for {request.path}"
    elif isinstance(error, MethodNotAllowed):
        allowed = ", ".join(sorted(method for method in (error.valid_methods or ()) if method != "OPTIONS"))
        message = f"method {request.method} is not allowed on {request.path}; allowed: {allowed}"
    else:
        message = error.description or error.name
    response = error_response(status, code, message)
    if isinstance(error, MethodNotAllowed) and error.valid_methods:
        response.headers["Allow"] = ", ".join(error.valid_methods)
    if status == 413:
        # The rest of the body is not read: the connection cannot carry another request, say so and end it.
        response.headers["Connection"] = "close"
    return response


async def _unexpected_error(error: Exception) -> Response:
    log.error("unhandled error method=%s path=%s error=%r", request.method, request.path, error, exc_info=error)
    return error_response(500, "internal_error", "internal error; it has been logged")


def register_error_handlers(app: Quart) -> None:
    app.register_error_handler(ApiError, _api_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected_error)
