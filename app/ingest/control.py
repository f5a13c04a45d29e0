"""Binance's live control methods on a stream connection: request frames, replies, and their correlation.

Requests are ``{"method": "SUBSCRIBE", "params": ["btcusdt@trade"], "id": 7}``; the server answers
``{"result": null, "id": 7}`` (or ``{"result": [...], "id": 7}`` for LIST_SUBSCRIPTIONS) or
``{"error": {"code": 2, "msg": "Invalid request"}, "id": 7}``. Ids here are positive ints, unique per
connection, so every reply finds its request.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import orjson
import trio

from app.convert import quote_frame

SUBSCRIBE = "SUBSCRIBE"
UNSUBSCRIBE = "UNSUBSCRIBE"
LIST_SUBSCRIPTIONS = "LIST_SUBSCRIPTIONS"


class ControlError(Exception):
    """The server answered a control request with an error object, or never answered."""

    def __init__(self, method: str, params: Sequence[str], message: str, code: int | None = None) -> None:
        self.method = method
        self.params = tuple(params)
        self.code = code
        self.message = message
        shown = ",".join(self.params[:5]) + ("…" if len(self.params) > 5 else "")
        super().__init__(f"{method} {shown} failed: {message}" + ("" if code is None else f" (code {code})"))


class ControlTimeout(ControlError):
    """No reply within the timeout: the connection is presumed broken."""


def request_frame(method: str, params: Sequence[str], request_id: int) -> str:
    message: dict[str, object] = {"method": method, "id": request_id}
    if params or method != LIST_SUBSCRIPTIONS:
        message["params"] = list(params)
    return orjson.dumps(message).decode()


@attrs.frozen(slots=True)
class ControlReply:
    request_id: object
    result: object = None
    error_code: int | None = None
    error_message: str | None = None

    @property
    def failed(self) -> bool:
        return self.error_message is not None


def control_reply(message: Mapping[str, Any]) -> ControlReply | None:
    """The reply carried by a decoded frame, or None when it is not a reply (no ``id`` key)."""
    if "id" not in message:
        return None
    if "error" in message:
        error = message["error"]
        if isinstance(error, Mapping):
            code = error.get("code")
            return ControlReply(
                request_id=message["id"],
                error_code=code if type(code) is int else None,
                error_message=str(error.get("msg", "no message")),
            )
        return ControlReply(request_id=message["id"], error_message=quote_frame(error))
    if "result" in message:
        return ControlReply(request_id=message["id"], result=message["result"])
    return None


class _Waiter:
    __slots__ = ("done", "reply")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.reply: ControlReply | None = None


class PendingRequests:
    """Request ids and the tasks waiting for their replies (one instance per connection)."""

    def __init__(self) -> None:
        self._next_id = 1
        self._waiters: dict[int, _Waiter] = {}
        # Set when the connection ended: waiting requests (and later ones) raise it instead of timing out.
        self._closed: BaseException | None = None

    def open(self) -> int:
        request_id = self._next_id
        self._next_id += 1
        self._waiters[request_id] = _Waiter()
        return request_id

    def resolve(self, reply: ControlReply) -> bool:
        """Hands ``reply`` to its waiter, which may not be waiting yet (a fast server answers while the request
        is still being sent); False when no request has that id or it was answered already (a stray reply)."""
        request_id = reply.request_id
        waiter = self._waiters.get(request_id) if type(request_id) is int else None
        if waiter is None or waiter.reply is not None:
            return False
        waiter.reply = reply
        waiter.done.set()
        return True

    async def wait(self, request_id: int) -> ControlReply:
        """The reply to ``request_id`` (the caller bounds the wait with a timeout); raises the connection's end
        (see ``close``) if it ends first. The request is forgotten afterwards, however the wait ends."""
        waiter = self._waiters[request_id]
        try:
            if self._closed is None and waiter.reply is None:
                await waiter.done.wait()
        finally:
            self.forget(request_id)
        if waiter.reply is None:
            assert self._closed is not None
            raise self._closed
        return waiter.reply

    def forget(self, request_id: int) -> None:
        """Drops a request nobody will wait for (its frame could not be sent)."""
        self._waiters.pop(request_id, None)

    def close(self, error: BaseException) -> None:
        """The connection ended with ``error``: every waiting request raises it now, not at its timeout."""
        self._closed = error
        for waiter in self._waiters.values():
            waiter.done.set()

    def __len__(self) -> int:
        return len(self._waiters)
