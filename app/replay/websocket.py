"""One server-side WebSocket connection: wsproto's public sans-I/O API over a Trio stream.

Only what the exchange needs, and nothing a library hides: the upgrade (accept, or reject with a status and a
body), whole messages in, pings and pongs handed to the caller (Binance counts them towards its message rate)
with pings answered, several text frames per socket write, pings that do not wait for their pong, and the
closing handshake. One task reads (``receive_request``, ``receive``, ``close``); any task may send.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Literal

import attrs
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    Pong,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

# Requests to an exchange are small; a larger message closes the connection with 1009 (as trio-websocket's
# default limit did).
MAX_MESSAGE_SIZE = 2**20
_RECEIVE_SIZE = 65536
# RFC 6455's code for a connection that ended without a close frame.
ABNORMAL_CLOSURE = 1006


class WebSocketClosed(Exception):
    """The connection is closed or closing: ``code`` and ``reason`` say how (1006: the TCP stream ended)."""

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(f"WebSocket closed: code={code} reason={reason!r}")
        self.code = code
        self.reason = reason


@attrs.frozen(slots=True)
class ControlFrame:
    """A ping (already answered) or a pong from the peer."""

    kind: Literal["ping", "pong"]
    payload: bytes


Incoming = str | bytes | ControlFrame


class ServerWebSocket:
    def __init__(self, stream: trio.SocketStream, *, max_message_size: int = MAX_MESSAGE_SIZE) -> None:
        self.stream = stream
        self.max_message_size = max_message_size
        self._protocol = WSConnection(ConnectionType.SERVER)
        self._events: deque[Event] = deque()
        # Writers take turns, and each frame is rendered under the lock so bytes leave in wsproto's order.
        self._send_lock = trio.StrictFIFOLock()
        self._closed: WebSocketClosed | None = None

    # --- the upgrade ---

    async def receive_request(self) -> str:
        """The target (path and query) of the peer's upgrade request; ``WebSocketClosed`` if there is none."""
        while True:
            event = await self._next_event()
            if isinstance(event, Request):
                return event.target

    async def accept(self) -> None:
        await self._send(AcceptConnection())

    async def reject(self, status: int, body: bytes) -> None:
        headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
        await self._send(RejectConnection(status_code=status, headers=headers, has_body=True), RejectData(data=body))

    # --- messages and control frames ---

    async def receive(self) -> Incoming:
        """The next whole message, ping or pong; ``WebSocketClosed`` once the peer closed or went away (a
        close from the peer is answered first)."""
        text: list[str] = []
        binary: list[bytes] = []
        size = 0
        while True:
            event = await self._next_event()
            if isinstance(event, TextMessage | BytesMessage):
                if isinstance(event, TextMessage):
                    text.append(event.data)
                else:
                    binary.append(bytes(event.data))
                size += len(event.data)
                if size > self.max_message_size:
                    await self._close_quietly(1009, f"message larger than {self.max_message_size} bytes")
                    raise WebSocketClosed(1009, "message too big")
                if event.message_finished:
                    return "".join(text) if isinstance(event, TextMessage) else b"".join(binary)
            elif isinstance(event, Ping):
                await self._send_if_open(event.response())
                return ControlFrame("ping", bytes(event.payload))
            elif isinstance(event, Pong):
                return ControlFrame("pong", bytes(event.payload))
            elif isinstance(event, CloseConnection):
                await self._peer_closed(event)

    async def send_messages(self, messages: Sequence[str]) -> None:
        """Text frames, all in one socket write; ``WebSocketClosed`` if the connection is no longer open."""
        async with self._send_lock:
            self._check_open()
            data = b"".join(self._protocol.send(TextMessage(data=message)) for message in messages)
            await self._write(data)

    async def send_ping(self, payload: bytes) -> None:
        """Sends a ping and returns at once: the pong arrives through ``receive``."""
        async with self._send_lock:
            self._check_open()
            await self._write(self._protocol.send(Ping(payload=payload)))

    async def close(self, code: int, reason: str | None) -> None:
        """Sends a close frame (unless the closing handshake is over) and waits for the peer's close or the end
        of the stream. The caller bounds the wait and closes the stream."""
        if self._closed is not None and self._closed.code == ABNORMAL_CLOSURE:
            return
        try:
            await self._send_if_open(CloseConnection(code=code, reason=reason))
            while self._protocol.state is not ConnectionState.CLOSED:
                await self._next_event()  # what the peer sends after our close is discarded
        except WebSocketClosed:
            pass

    # --- internals ---

    async def _next_event(self) -> Event:
        while not self._events:
            if self._closed is not None and self._closed.code == ABNORMAL_CLOSURE:
                raise self._closed
            try:
                data = await self.stream.receive_some(_RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""  # reset by the peer: the same as an end of stream here
            if not data and self._protocol.state is ConnectionState.CONNECTING:
                raise self._lost("the stream ended before the upgrade")
            try:
                self._protocol.receive_data(data or None)
            except RemoteProtocolError as error:
                # A bad upgrade request: wsproto suggests the answer (a 400).
                if error.event_hint is not None:
                    await self._send_if_open(error.event_hint)
                raise self._lost(f"bad handshake: {error}") from None
            self._events.extend(self._protocol.events())
            if not data:
                self._closed = self._closed or WebSocketClosed(ABNORMAL_CLOSURE, "the stream ended")
        return self._events.popleft()

    async def _peer_closed(self, event: CloseConnection) -> None:
        """A close frame, a frame wsproto found invalid (then the state is still open), or the stream's end."""
        reason = event.reason or ""
        if self._protocol.state is ConnectionState.REMOTE_CLOSING:
            await self._send_if_open(event.response())
        elif self._protocol.state is ConnectionState.OPEN:
            await self._send_if_open(CloseConnection(code=event.code, reason=reason))
        if self._closed is None:
            self._closed = WebSocketClosed(event.code, reason)
        raise WebSocketClosed(event.code, reason)

    async def _close_quietly(self, code: int, reason: str) -> None:
        try:
            await self._send_if_open(CloseConnection(code=code, reason=reason))
        except WebSocketClosed:
            pass
        self._closed = self._closed or WebSocketClosed(code, reason)

    async def _send(self, *events: Event) -> None:
        async with self._send_lock:
            await self._write(b"".join(self._protocol.send(event) for event in events))

    async def _send_if_open(self, event: Event) -> None:
        """Sends a reply (pong, close, rejection) unless the state no longer allows one."""
        async with self._send_lock:
            if self._closed is not None and self._closed.code == ABNORMAL_CLOSURE:
                return
            try:
                data = self._protocol.send(event)
            except LocalProtocolError:
                return  # e.g. a pong after our own close frame
            await self._write(data)

    def _check_open(self) -> None:
        if self._closed is not None:
            raise WebSocketClosed(self._closed.code, self._closed.reason)
        if self._protocol.state is not ConnectionState.OPEN:
            raise WebSocketClosed(1000, "closing")

    async def _write(self, data: bytes) -> None:
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise self._lost("the peer went away") from None

    def _lost(self, reason: str) -> WebSocketClosed:
        self._closed = WebSocketClosed(ABNORMAL_CLOSURE, reason)
        return self._closed
