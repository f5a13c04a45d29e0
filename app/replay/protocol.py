"""Binance's WebSocket market-stream protocol, without sockets: URL targets, live requests, responses.

Error codes as Binance documents them: 0 unknown property, 1 invalid value type, 2 invalid request,
3 invalid JSON; 4 "Too many subscriptions" is seen in practice.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qs, urlsplit

import attrs
import orjson

RequestId = int | str | None

METHODS = ("SUBSCRIBE", "UNSUBSCRIBE", "LIST_SUBSCRIPTIONS", "SET_PROPERTY", "GET_PROPERTY")
_MAX_ID_LENGTH = 36
_MAX_ID = 2**63 - 1
# Lower-case market streams (btcusdt@trade, btcusdt@kline_1m, ...) and all-market ones (!ticker@arr).
_STREAM_NAME = re.compile(r"^(?:[a-z0-9]+@[a-zA-Z0-9_@]+|![a-zA-Z0-9_@]+)$")


class TargetError(Exception):
    """A handshake target the server refuses with an HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@attrs.frozen(slots=True)
class Target:
    """What a client asked for in its URL."""

    combined: bool
    streams: tuple[str, ...]
    microseconds: bool = False


def parse_target(target: str) -> Target:
    """``/ws``, ``/ws/<stream>[/<stream>...]`` (raw) or ``/stream?streams=a/b`` (combined)."""
    parts = urlsplit(target)
    query = parse_qs(parts.query)
    unit = query.get("timeUnit", ["MILLISECOND"])[-1].upper()
    if unit not in ("MILLISECOND", "MICROSECOND"):
        raise TargetError(400, f"Invalid timeUnit {unit!r}")
    microseconds = unit == "MICROSECOND"
    path = parts.path.rstrip("/")
    if path == "/ws" or path.startswith("/ws/"):
        streams = tuple(name for name in path[len("/ws") :].split("/") if name)
        return Target(combined=False, streams=streams, microseconds=microseconds)
    if path == "/stream":
        names = query.get("streams", [""])[-1]
        return Target(combined=True, streams=tuple(name for name in names.split("/") if name),
                      microseconds=microseconds)
    raise TargetError(404, f"Unknown path {parts.path!r}")


def valid_stream_name(name: str) -> bool:
    return bool(_STREAM_NAME.match(name))


@attrs.frozen(slots=True)
class Request:
    method: str
    params: tuple[Any, ...]
    id: RequestId


class RequestError(Exception):
    """A request Binance answers with an error object."""

    def __init__(self, code: int, message: str, request_id: RequestId = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id

    def response(self) -> str:
        return error_response(self.request_id, self.code, self.message)


def result_response(request_id: RequestId, result: object) -> str:
    return orjson.dumps({"result": result, "id": request_id}).decode()


def error_response(request_id: RequestId, code: int, message: str) -> str:
    return orjson.dumps({"error": {"code": code, "msg": message}, "id": request_id}).decode()


def parse_request(message: str | bytes) -> Request:
    """A live request, or ``RequestError`` with Binance's code and message."""
    try:
        body = orjson.loads(message)
    except orjson.JSONDecodeError as error:
        raise RequestError(3, f"Invalid JSON: {error}") from None
    if not isinstance(body, dict):
        raise RequestError(2, "Invalid request: request must be a JSON object")
    request_id = body.get("id")
    if not _valid_id(request_id):
        raise RequestError(2, "Invalid request: request ID must be an unsigned integer")
    method = body.get("method")
    if method is None:
        raise RequestError(2, "Invalid request: missing field `method`", request_id)
    if method not in METHODS:
        expected = ", ".join(f"`{name}`" for name in METHODS)
        raise RequestError(2, f"Invalid request: unknown variant `{method}`, expected one of {expected}", request_id)
    unknown = set(body) - {"method", "params", "id"}
    if unknown:
        raise RequestError(2, f"Invalid request: unknown field `{sorted(unknown)[0]}`", request_id)
    params = body.get("params", [])
    if not isinstance(params, list):
        raise RequestError(2, "Invalid request: params must be a list", request_id)
    _check_params(method, params, request_id)
    return Request(method=method, params=tuple(params), id=request_id)


def _valid_id(request_id: object) -> bool:
    if request_id is None:
        return True
    if type(request_id) is int:
        return 0 <= request_id <= _MAX_ID
    return isinstance(request_id, str) and len(request_id) <= _MAX_ID_LENGTH


def _check_params(method: str, params: list[Any], request_id: RequestId) -> None:
    if method in ("SUBSCRIBE", "UNSUBSCRIBE"):
        for name in params:
            if not isinstance(name, str):
                raise RequestError(2, "Invalid request: stream names must be strings", request_id)
            if not valid_stream_name(name):
                raise RequestError(2, f"Invalid request: invalid stream name `{name}`", request_id)
    elif method == "LIST_SUBSCRIPTIONS":
        if params:
            raise RequestError(2, "Invalid request: too many parameters", request_id)
    elif method == "SET_PROPERTY":
        if len(params) != 2:
            raise RequestError(2, "Invalid request: SET_PROPERTY takes a property name and a value", request_id)
        _check_property(params[0], request_id)
        if not isinstance(params[1], bool):
            raise RequestError(1, "Invalid value type: expected Boolean", request_id)
    elif method == "GET_PROPERTY":
        if len(params) != 1:
            raise RequestError(2, "Invalid request: GET_PROPERTY takes one property name", request_id)
        _check_property(params[0], request_id)


def _check_property(name: object, request_id: RequestId) -> None:
    if not isinstance(name, str):
        raise RequestError(2, "Invalid request: property name must be a string", request_id)
    if name != "combined":
        raise RequestError(0, "Unknown property", request_id)
