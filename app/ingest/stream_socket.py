"""The client side of the exchange's WebSocket, built for reading a fast stream: the Trio shell around
``app.ingest.frame_reader`` (the frame parser, no I/O) and the HTTP upgrade (through h11).

Why not trio-websocket (the design card named it): it parses every frame through wsproto and hands each
message to the reader over an internal channel, which capped ingest far below what this project needs; parsing
each whole socket read in one pass is several times cheaper (figures in ``bench/RESULTS.md``, the decision in
``docs/decisions/0001-exchange-websocket-client.md``).

A read-ahead task reads the socket and answers pings as they arrive, whether or not anyone is consuming:
Binance drops a client that has not answered a ping within a minute, and the pipeline behind
``receive_batch`` may hold it back longer under backpressure. What it reads ahead waits in memory, up to
``max_read_ahead_bytes``; beyond that it stops reading, TCP pushes back on the server, and pongs wait too.
"""

from __future__ import annotations

import base64
import hashlib
import os
import ssl
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import h11
import trio

from app.ingest.frame_reader import (
    ABNORMAL_CLOSURE,
    GOING_AWAY,
    MAX_MESSAGE_BYTES,
    NORMAL_CLOSURE,
    OP_CLOSE,
    OP_TEXT,
    FrameReader,
    client_frame,
)

__all__ = ["HandshakeFailed", "SocketClosed", "StreamSocket", "open_stream_socket"]

_WEBSOCKET_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
# One read is one batch of trades for the pipeline: 64 KiB holds ~300 trade frames.
RECEIVE_BYTES = 65_536
# TCP connect, TLS and the WebSocket upgrade together.
CONNECT_TIMEOUT_SECONDS = 5.0
CLOSE_TIMEOUT_SECONDS = 2.0
# Messages read ahead of the consumer, at most: minutes of a busy combined stream.
MAX_READ_AHEAD_BYTES = 64 * 1024 * 1024
_NETWORK_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


class HandshakeFailed(Exception):
    """The WebSocket upgrade did not succeed (refused, malformed reply, wrong accept key)."""


class SocketClosed(Exception):
    """The WebSocket ended: by a close frame (``code``/``reason`` as sent), a protocol error, or TCP loss (1006)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"closed code={code} reason={reason}")
        self.code = code
        self.reason = reason


class StreamSocket:
    """An open client WebSocket. One task receives (``receive_batch``); any task may send; ``read_ahead``
    runs beside them (``open_stream_socket`` starts it)."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        buffered: bytes = b"",
        *,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        receive_bytes: int = RECEIVE_BYTES,
        max_read_ahead_bytes: int = MAX_READ_AHEAD_BYTES,
    ) -> None:
        self._stream = stream
        self._buffered = buffered
        self._reader = FrameReader(max_message_bytes=max_message_bytes)
        self._receive_bytes = receive_bytes
        self._max_read_ahead_bytes = max_read_ahead_bytes
        # Batches read but not yet received, and their size in bytes.
        self._batches: deque[tuple[list[bytes], int]] = deque()
        self._read_ahead_bytes = 0
        self._batch_arrived = trio.Event()
        self._room_freed = trio.Event()
        self._send_lock = trio.StrictFIFOLock()
        self._close_sent = False
        # Set once the stream has ended; raised by every later send, and by receive once the batches are out.
        self.closed: SocketClosed | None = None

    @property
    def read_ahead_bytes(self) -> int:
        """Bytes read from the socket and not yet received: how far the consumer is behind."""
        return self._read_ahead_bytes

    async def receive_batch(self) -> list[bytes]:
        """The complete messages of the next read (at least one), in order; raises ``SocketClosed`` at the end
        (after every message received before the close was returned)."""
        while not self._batches:
            if self.closed is not None:
                raise self.closed
            self._batch_arrived = trio.Event()
            await self._batch_arrived.wait()
        batch, size = self._batches.popleft()
        self._read_ahead_bytes -= size
        self._room_freed.set()
        return batch

    async def read_ahead(self) -> None:
        """Reads the socket into batches and answers control frames at once, until the stream ends (it then
        returns; ``closed`` says how)."""
        try:
            data = self._buffered
            self._buffered = b""
            while True:
                received = self._reader.feed(data) if data else None
                if received is not None:
                    # Messages first: they stay deliverable even if sending the replies fails.
                    if received.messages:
                        # Counted by the bytes read: frame headers included, no pass over the messages.
                        self._batches.append((received.messages, len(data)))
                        self._read_ahead_bytes += len(data)
                        self._batch_arrived.set()
                    if received.replies:
                        await self._send_replies(received.replies, ends_stream=received.close is not None)
                    if received.close is not None:
                        self._end(SocketClosed(received.close.code, received.close.reason))
                        return
                while self._read_ahead_bytes >= self._max_read_ahead_bytes:
                    self._room_freed = trio.Event()
                    await self._room_freed.wait()
                read = await self._stream.receive_some(self._receive_bytes)
                if not read:
                    close = self._reader.feed_eof()
                    self._end(SocketClosed(close.code, close.reason))
                    return
                # bytes(x) of a bytes object is x itself (no copy); SSL streams may return a bytearray.
                data = bytes(read)
        except _NETWORK_ERRORS as error:
            self._end(SocketClosed(ABNORMAL_CLOSURE, f"connection lost: {error!r}"))
        except SocketClosed as closed:
            self._end(closed)

    def _end(self, closed: SocketClosed) -> SocketClosed:
        """Records how the stream ended (the first cause counts) and wakes the receiver; returns the cause."""
        if self.closed is None:
            self.closed = closed
        self._batch_arrived.set()
        return self.closed

    async def _send_replies(self, replies: list[bytes], *, ends_stream: bool) -> None:
        await self._send(b"".join(replies))
        if ends_stream:
            self._close_sent = True

    async def send_text(self, text: str) -> None:
        await self._send(client_frame(OP_TEXT, text.encode()))

    async def _send(self, frames: bytes) -> None:
        if self._close_sent:
            raise self.closed or SocketClosed(NORMAL_CLOSURE, "closed by this client")
        async with self._send_lock:
            try:
                await self._stream.send_all(frames)
            except _NETWORK_ERRORS as error:
                closed = self._end(SocketClosed(ABNORMAL_CLOSURE, f"connection lost: {error!r}"))
                raise closed from error
            except trio.Cancelled:
                # Part of the frame may be on the wire: no later frame could be parsed by the server.
                self._end(SocketClosed(ABNORMAL_CLOSURE, "a send was cancelled midway"))
                self._close_sent = True
                raise

    async def aclose(self, code: int = NORMAL_CLOSURE) -> None:
        """Closes politely (a close frame, then the TCP connection), within ``CLOSE_TIMEOUT_SECONDS``."""
        with trio.move_on_after(CLOSE_TIMEOUT_SECONDS) as scope:
            scope.shield = True
            if not self._close_sent:
                try:
                    await self._send(client_frame(OP_CLOSE, code.to_bytes(2, "big")))
                except SocketClosed:
                    pass  # the peer is gone already: nothing left to tell it
                self._close_sent = True
            self._end(SocketClosed(code, "closed by this client"))
        await trio.aclose_forcefully(self._stream)


@asynccontextmanager
async def open_stream_socket(
    url: str,
    *,
    connect_timeout: float = CONNECT_TIMEOUT_SECONDS,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
    receive_bytes: int = RECEIVE_BYTES,
    max_read_ahead_bytes: int = MAX_READ_AHEAD_BYTES,
    ssl_context: ssl.SSLContext | None = None,
) -> AsyncIterator[StreamSocket]:
    """Connects to ``url`` (``ws://`` or ``wss://``), upgrades, and closes politely on exit.

    Raises ``HandshakeFailed`` (or ``OSError``) when the socket cannot be opened within ``connect_timeout``.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise HandshakeFailed(f"not a WebSocket URL: {url!r}")
    secure = parts.scheme == "wss"
    port = parts.port or (443 if secure else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    default_port = parts.port is None or parts.port == (443 if secure else 80)
    host_header = parts.hostname if default_port else f"{parts.hostname}:{port}"
    stream: trio.abc.Stream | None = None
    try:
        with trio.fail_after(connect_timeout):
            if secure:
                stream = await trio.open_ssl_over_tcp_stream(
                    parts.hostname, port, ssl_context=ssl_context or ssl.create_default_context(),
                    https_compatible=True,
                )
            else:
                stream = await trio.open_tcp_stream(parts.hostname, port)
            buffered = await _upgrade(stream, host_header, target)
    except trio.TooSlowError:
        if stream is not None:
            await trio.aclose_forcefully(stream)
        raise HandshakeFailed(f"no WebSocket within {connect_timeout:.1f} s") from None
    except trio.BrokenResourceError as error:
        # TLS failures (an unverifiable certificate, for one) arrive wrapped: name the cause.
        if stream is not None:
            await trio.aclose_forcefully(stream)
        raise HandshakeFailed(f"connection failed during the upgrade: {error.__cause__ or error!r}") from error
    except BaseException:
        if stream is not None:
            await trio.aclose_forcefully(stream)
        raise
    socket = StreamSocket(stream, buffered, max_message_bytes=max_message_bytes, receive_bytes=receive_bytes,
                          max_read_ahead_bytes=max_read_ahead_bytes)
    failure: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(socket.read_ahead)
            try:
                yield socket
            finally:
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # read_ahead raises nothing (it records how the stream ended), so a group of one holds what the body
        # raised: pass that on as it was, as if there were no nursery here.
        if len(group.exceptions) != 1:
            raise
        failure = group.exceptions[0]
    finally:
        await socket.aclose(GOING_AWAY)
    if failure is not None:
        raise failure


async def _upgrade(stream: trio.abc.Stream, host: str, target: str) -> bytes:
    """The HTTP/1.1 upgrade (RFC 6455 §4.1). Returns bytes that arrived after the server's 101 reply."""
    key = base64.b64encode(os.urandom(16))
    http = h11.Connection(h11.CLIENT)
    request = h11.Request(
        method="GET",
        target=target,
        headers=[
            ("Host", host),
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", key.decode()),
            ("Sec-WebSocket-Version", "13"),
        ],
    )
    await stream.send_all(http.send(request))
    while True:
        try:
            event = http.next_event()
        except h11.RemoteProtocolError as error:
            raise HandshakeFailed(f"malformed upgrade reply: {error}") from None
        if event is h11.NEED_DATA:
            data = await stream.receive_some(RECEIVE_BYTES)
            if not data:
                raise HandshakeFailed("the server closed the connection during the upgrade")
            http.receive_data(bytes(data))
            continue
        if isinstance(event, h11.InformationalResponse) and event.status_code == 101:
            break
        if isinstance(event, h11.Response | h11.InformationalResponse):
            raise HandshakeFailed(f"upgrade refused: HTTP {event.status_code}")
        raise HandshakeFailed(f"unexpected upgrade reply: {event!r}")
    headers = {name.lower(): value for name, value in event.headers}
    expected = base64.b64encode(hashlib.sha1(key + _WEBSOCKET_GUID).digest())
    if headers.get(b"upgrade", b"").lower() != b"websocket":
        raise HandshakeFailed("the 101 reply does not upgrade to websocket")
    if headers.get(b"sec-websocket-accept") != expected:
        raise HandshakeFailed("the 101 reply carries a wrong Sec-WebSocket-Accept")
    if b"sec-websocket-extensions" in headers:
        raise HandshakeFailed("the server enabled an extension that was not offered")
    data, _closed = http.trailing_data
    return bytes(data)
