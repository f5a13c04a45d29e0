"""The client side of the exchange's WebSocket, built for reading a fast stream: whole socket reads are parsed
into messages in one pass.

Why not trio-websocket here (it still serves ``/ws`` and the simulator): it parses every frame through wsproto
(~8 µs) and hands each message to the reader over an internal channel (~5 µs), which alone capped ingest
below 30,000 trades/s on this project's machines. Parsing the frames of one 64 KiB read in a loop costs
~0.4 µs per frame (``bench/RESULTS.md``). The HTTP upgrade goes through h11 (a library), the frame layer
follows RFC 6455 for a client without extensions:

- frames from the server must be unmasked and carry no reserved bits; a violation closes with 1002;
- pings are answered with a pong carrying the same payload (Binance disconnects a client that does not pong
  within a minute), pongs are ignored, a close frame is echoed and ends the stream;
- fragmented messages are reassembled; a message above ``max_message_bytes`` closes with 1009;
- text payloads are returned as bytes, undecoded: the JSON parser that reads them rejects invalid UTF-8;
- frames we send are masked with a fresh random key (client frames must be).
"""

from __future__ import annotations

import base64
import hashlib
import os
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import h11
import trio

__all__ = ["HandshakeFailed", "SocketClosed", "StreamSocket", "open_stream_socket"]

_OP_CONTINUATION, _OP_TEXT, _OP_BINARY, _OP_CLOSE, _OP_PING, _OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
# FIN + text: the first byte of nearly every frame an exchange sends.
_FINAL_TEXT = 0x80 | _OP_TEXT
_WEBSOCKET_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
NORMAL_CLOSURE = 1000
GOING_AWAY = 1001
PROTOCOL_ERROR = 1002
MESSAGE_TOO_BIG = 1009
# Not sent on the wire: the code reported when the TCP connection ended without a close frame.
ABNORMAL_CLOSURE = 1006
# One read is one batch of trades for the pipeline: 64 KiB holds ~300 trade frames.
RECEIVE_BYTES = 65_536
# TCP connect, TLS and the WebSocket upgrade together.
CONNECT_TIMEOUT_SECONDS = 5.0
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
CLOSE_TIMEOUT_SECONDS = 2.0


class HandshakeFailed(Exception):
    """The WebSocket upgrade did not succeed (refused, malformed reply, wrong accept key)."""


class SocketClosed(Exception):
    """The WebSocket ended: by a close frame (``code``/``reason`` as sent), a protocol error, or TCP loss (1006)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"closed code={code} reason={reason}")
        self.code = code
        self.reason = reason


class _ProtocolViolation(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class StreamSocket:
    """An open client WebSocket. One task receives (``receive_batch``); any task may send."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        buffered: bytes = b"",
        *,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        receive_bytes: int = RECEIVE_BYTES,
    ) -> None:
        self._stream = stream
        # Bytes received but not yet parsed: at most one incomplete frame between reads.
        self._unparsed = buffered
        # Reads that cannot complete the incomplete frame yet, joined once it can (``_needed`` bytes, when its
        # header is known): concatenating every read onto a large frame would copy it over and over.
        self._waiting: list[bytes] = []
        self._waiting_bytes = 0
        self._needed = 0
        self._max_message_bytes = max_message_bytes
        self._receive_bytes = receive_bytes
        self._fragments: list[bytes] | None = None
        self._fragments_size = 0
        self._pings: list[bytes] = []
        self._violation: _ProtocolViolation | None = None
        self._send_lock = trio.StrictFIFOLock()
        self._close_sent = False
        # Set once the stream has ended; raised by every later receive or send.
        self.closed: SocketClosed | None = None

    async def receive_batch(self) -> list[bytes]:
        """The complete messages of the next read (at least one), in order; raises ``SocketClosed`` at the end
        (after every message received before the close was returned)."""
        while True:
            if self._violation is not None:
                pending, self._violation = self._violation, None
                await self._fail(pending.code, pending.reason)
            if self.closed is not None:
                raise self.closed
            messages: list[bytes] = []
            try:
                self._parse(messages)
            except _ProtocolViolation as violation:
                # Reported on the next call: the messages before the bad frame are delivered first.
                self._violation = violation
            try:
                await self._answer_pings()
            except SocketClosed:
                if not messages:
                    raise
            if messages:
                return messages
            if self._violation is not None or self.closed is not None:
                continue
            try:
                data = await self._stream.receive_some(self._receive_bytes)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as error:
                self.closed = SocketClosed(ABNORMAL_CLOSURE, f"connection lost: {error!r}")
                raise self.closed from error
            if not data:
                self.closed = SocketClosed(ABNORMAL_CLOSURE, "connection lost: TCP closed without a close frame")
                raise self.closed
            # bytes(x) of a bytes object is x itself (no copy); SSL streams may return a bytearray.
            data = bytes(data)
            if self._needed:
                self._waiting.append(data)
                self._waiting_bytes += len(data)
                if len(self._unparsed) + self._waiting_bytes < self._needed:
                    continue
                data = self._waiting[0] if len(self._waiting) == 1 else b"".join(self._waiting)
                self._waiting.clear()
                self._waiting_bytes = 0
            self._unparsed = self._unparsed + data if self._unparsed else data

    def _parse(self, messages: list[bytes]) -> None:
        """Moves every complete frame of ``_unparsed`` out: messages to ``messages``, control frames handled."""
        data = self._unparsed
        end = len(data)
        position = 0
        limit = self._max_message_bytes
        self._needed = 0
        try:
            while end - position >= 2:
                first = data[position]
                length = data[position + 1]
                if length < 126:
                    header = 2
                elif length == 126:
                    if end - position < 4:
                        break
                    length = (data[position + 2] << 8) | data[position + 3]
                    header = 4
                elif length == 127:
                    if end - position < 10:
                        break
                    length = int.from_bytes(data[position + 2 : position + 10], "big")
                    header = 10
                else:
                    raise _ProtocolViolation(PROTOCOL_ERROR, "the server sent a masked frame")
                if length > limit:
                    raise _ProtocolViolation(MESSAGE_TOO_BIG, f"frame of {length} bytes exceeds {limit}")
                start = position + header
                if end - start < length:
                    self._needed = header + length
                    break
                position = start + length
                if first == _FINAL_TEXT and self._fragments is None:
                    messages.append(data[start:position])
                elif self._frame(first, data[start:position], messages):
                    break  # a close frame: nothing after it counts
        finally:
            self._unparsed = data[position:] if position else data

    def _frame(self, first: int, payload: bytes, messages: list[bytes]) -> bool:
        """Any frame but an unfragmented text message (the fast path). Returns True for a close frame."""
        if first & 0x70:
            raise _ProtocolViolation(PROTOCOL_ERROR, "reserved bits set in a frame (no extension was negotiated)")
        final = bool(first & 0x80)
        opcode = first & 0x0F
        if opcode in (_OP_TEXT, _OP_BINARY):
            if self._fragments is not None:
                raise _ProtocolViolation(PROTOCOL_ERROR, "a new message began before the fragmented one ended")
            if final:
                messages.append(payload)
            else:
                self._fragments = [payload]
                self._fragments_size = len(payload)
            return False
        if opcode == _OP_CONTINUATION:
            if self._fragments is None:
                raise _ProtocolViolation(PROTOCOL_ERROR, "a continuation frame without a message to continue")
            self._fragments.append(payload)
            self._fragments_size += len(payload)
            if self._fragments_size > self._max_message_bytes:
                raise _ProtocolViolation(
                    MESSAGE_TOO_BIG, f"message of {self._fragments_size} bytes exceeds {self._max_message_bytes}"
                )
            if final:
                messages.append(b"".join(self._fragments))
                self._fragments = None
            return False
        if opcode not in (_OP_CLOSE, _OP_PING, _OP_PONG):
            raise _ProtocolViolation(PROTOCOL_ERROR, f"unknown opcode {opcode:#x}")
        if not final or len(payload) > 125:
            raise _ProtocolViolation(PROTOCOL_ERROR, "a control frame was fragmented or longer than 125 bytes")
        if opcode == _OP_PING:
            self._pings.append(payload)
        elif opcode == _OP_CLOSE:
            self._on_close_frame(payload)
            return True
        return False

    def _on_close_frame(self, payload: bytes) -> None:
        if len(payload) == 1:
            raise _ProtocolViolation(PROTOCOL_ERROR, "a close frame with a one-byte payload")
        code = int.from_bytes(payload[:2], "big") if payload else NORMAL_CLOSURE
        reason = payload[2:].decode("utf-8", "replace")
        self.closed = SocketClosed(code, reason)

    async def _answer_pings(self) -> None:
        while self._pings:
            payload = self._pings.pop(0)
            await self._send_frame(_OP_PONG, payload)
        if self.closed is not None and not self._close_sent:
            # Echo the server's close (RFC 6455 §5.5.1); the server then ends the TCP connection.
            await self._send_close(self.closed.code if self.closed.code != ABNORMAL_CLOSURE else NORMAL_CLOSURE)

    async def _fail(self, code: int, reason: str) -> None:
        self.closed = SocketClosed(code, f"protocol error: {reason}")
        self._unparsed = b""
        await self._send_close(code, reason[:100])
        await self._stream.aclose()

    async def send_text(self, text: str) -> None:
        await self._send_frame(_OP_TEXT, text.encode())

    async def _send_close(self, code: int, reason: str = "") -> None:
        try:
            await self._send_frame(_OP_CLOSE, code.to_bytes(2, "big") + reason.encode())
        except (SocketClosed, trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # the peer is gone already: nothing left to tell it
        self._close_sent = True

    async def _send_frame(self, opcode: int, payload: bytes) -> None:
        if self._close_sent:
            raise self.closed or SocketClosed(NORMAL_CLOSURE, "closed by this client")
        frame = _client_frame(opcode, payload)
        async with self._send_lock:
            try:
                await self._stream.send_all(frame)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as error:
                if self.closed is None:
                    self.closed = SocketClosed(ABNORMAL_CLOSURE, f"connection lost: {error!r}")
                raise self.closed from error
            except trio.Cancelled:
                # Part of the frame may be on the wire: no later frame could be parsed by the server.
                if self.closed is None:
                    self.closed = SocketClosed(ABNORMAL_CLOSURE, "a send was cancelled midway")
                self._close_sent = True
                raise

    async def aclose(self, code: int = NORMAL_CLOSURE) -> None:
        """Closes politely (a close frame, then the TCP connection), within ``CLOSE_TIMEOUT_SECONDS``."""
        with trio.move_on_after(CLOSE_TIMEOUT_SECONDS) as scope:
            scope.shield = True
            if not self._close_sent:
                await self._send_close(code)
            if self.closed is None:
                self.closed = SocketClosed(code, "closed by this client")
        await trio.aclose_forcefully(self._stream)


def _client_frame(opcode: int, payload: bytes) -> bytes:
    length = len(payload)
    if length < 126:
        header = bytes((0x80 | opcode, 0x80 | length))
    elif length < 1 << 16:
        header = bytes((0x80 | opcode, 0x80 | 126)) + length.to_bytes(2, "big")
    else:
        header = bytes((0x80 | opcode, 0x80 | 127)) + length.to_bytes(8, "big")
    mask = os.urandom(4)
    if not length:
        return header + mask
    # XOR with the key repeated over the payload, as one big-integer operation (fast for any length).
    key = int.from_bytes((mask * (length // 4 + 1))[:length], "big")
    return header + mask + (int.from_bytes(payload, "big") ^ key).to_bytes(length, "big")


@asynccontextmanager
async def open_stream_socket(
    url: str,
    *,
    connect_timeout: float = CONNECT_TIMEOUT_SECONDS,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
    receive_bytes: int = RECEIVE_BYTES,
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
    socket = StreamSocket(stream, buffered, max_message_bytes=max_message_bytes, receive_bytes=receive_bytes)
    try:
        yield socket
    finally:
        await socket.aclose(GOING_AWAY)


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
