"""RFC 6455 framing for the client side of the exchange's WebSocket, without I/O: bytes in, messages and
replies out. ``app/ingest/stream_socket.py`` is the Trio shell that reads the socket, feeds this and writes
the replies.

A client without extensions (none is offered in the upgrade) accepts from the server:

- unmasked frames with no reserved bits and a known opcode; anything else fails with 1002;
- text and binary messages, fragmented or not; text must be UTF-8 (1007 otherwise). Payloads are returned as
  bytes, undecoded (the JSON parser reads bytes); a message above ``max_message_bytes`` fails with 1009, a
  64-bit length with the most significant bit set (RFC 6455 §5.2) with 1002;
- pings, answered with a pong carrying the same payload; pongs, ignored;
- a close frame: its code must be one a peer may send (1000-1003, 1007-1014, 3000-4999) and its reason
  UTF-8 (1002 / 1007 otherwise); it is echoed as received and ends the stream.

The checks follow the order of the ``websockets`` library (``websockets.frames.Frame.parse``), against which
``tests/test_frame_reader.py`` compares this reader on arbitrary byte streams: a frame's opcode, mask bit
and size are judged from its header; reserved bits, control-frame rules and UTF-8 once it is complete.
"""

from __future__ import annotations

import os

import attrs

__all__ = [
    "ABNORMAL_CLOSURE",
    "GOING_AWAY",
    "INVALID_DATA",
    "MAX_MESSAGE_BYTES",
    "MESSAGE_TOO_BIG",
    "NORMAL_CLOSURE",
    "NO_STATUS_RECEIVED",
    "PROTOCOL_ERROR",
    "Close",
    "FrameReader",
    "Received",
    "client_frame",
]

OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_OPCODES = frozenset((OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG))
# FIN + text: the first byte of nearly every frame an exchange sends.
_FINAL_TEXT = 0x80 | OP_TEXT

NORMAL_CLOSURE = 1000
GOING_AWAY = 1001
PROTOCOL_ERROR = 1002
INVALID_DATA = 1007
MESSAGE_TOO_BIG = 1009
# Never on the wire: reported for an empty close frame, and when TCP ended without a close frame.
NO_STATUS_RECEIVED = 1005
ABNORMAL_CLOSURE = 1006
# Codes a peer may put in a close frame (RFC 6455 §7.4, IANA registry); 1004-1006 and 1015 are reserved.
_SENDABLE_CLOSE_CODES = frozenset((1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014))
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
_MAX_CONTROL_PAYLOAD = 125


@attrs.frozen(slots=True)
class Close:
    """How the stream ended: the server's close code and reason, or ours when it broke the protocol."""

    code: int
    reason: str


@attrs.frozen(slots=True)
class Received:
    """What one ``feed`` produced: complete messages in order, frames to send back (pongs, then our close
    frame if the stream ended), and ``close`` once the stream has ended (nothing is read after it)."""

    messages: list[bytes]
    replies: list[bytes]
    close: Close | None


class _Violation(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def _sendable_close_code(code: int) -> bool:
    return code in _SENDABLE_CLOSE_CODES or 3000 <= code < 5000


def _is_utf8(payload: bytes) -> bool:
    # isascii() is a fast scan without allocation; trade frames are ASCII.
    if payload.isascii():
        return True
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class FrameReader:
    """Parses the server's frames out of the bytes it is fed, in one pass per ``feed``."""

    def __init__(self, *, max_message_bytes: int = MAX_MESSAGE_BYTES) -> None:
        self._max_message_bytes = max_message_bytes
        # Bytes fed but not yet parsed: at most one incomplete frame.
        self._unparsed = b""
        # Reads that cannot complete the incomplete frame yet, joined once they can (``_needed`` bytes, when
        # its header is known): concatenating every read onto a large frame would copy it over and over.
        self._waiting: list[bytes] = []
        self._waiting_bytes = 0
        self._needed = 0
        # The parts of a fragmented message, and whether it is text.
        self._fragments: list[bytes] | None = None
        self._fragments_size = 0
        self._fragments_text = False
        self.close: Close | None = None

    def feed(self, data: bytes) -> Received:
        """Parses ``data`` (the next bytes from the socket) with what came before it."""
        if self.close is not None:
            return Received([], [], self.close)
        if self._needed:
            self._waiting.append(data)
            self._waiting_bytes += len(data)
            if len(self._unparsed) + self._waiting_bytes < self._needed:
                return Received([], [], None)
            data = b"".join(self._waiting)
            self._waiting.clear()
            self._waiting_bytes = 0
        self._unparsed = self._unparsed + data if self._unparsed else data
        messages: list[bytes] = []
        replies: list[bytes] = []
        try:
            self._parse(messages, replies)
        except _Violation as violation:
            self._end(Close(violation.code, f"protocol error: {violation.reason}"))
            replies.append(client_frame(OP_CLOSE, violation.code.to_bytes(2, "big") + violation.reason[:100].encode()))
        return Received(messages, replies, self.close)

    def feed_eof(self) -> Close:
        """The TCP stream ended: how the WebSocket ended (1006 unless a close frame came first)."""
        if self.close is None:
            self._end(Close(ABNORMAL_CLOSURE, "connection lost: TCP closed without a close frame"))
        assert self.close is not None
        return self.close

    def _end(self, close: Close) -> None:
        self.close = close
        self._unparsed = b""
        self._waiting.clear()
        self._fragments = None
        self._needed = 0

    def _parse(self, messages: list[bytes], replies: list[bytes]) -> None:
        """Moves every complete frame of ``_unparsed`` out, control frames answered in ``replies``."""
        data = self._unparsed
        end = len(data)
        position = 0
        self._needed = 0
        try:
            while end - position >= 2:
                first = data[position]
                length = data[position + 1]
                if first != _FINAL_TEXT and (first & 0x0F) not in _OPCODES:
                    raise _Violation(PROTOCOL_ERROR, f"unknown opcode {first & 0x0F:#x}")
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
                    if length >> 63:
                        raise _Violation(PROTOCOL_ERROR, "a 64-bit frame length with the most significant bit set")
                    header = 10
                else:
                    raise _Violation(PROTOCOL_ERROR, "the server sent a masked frame")
                # As websockets does: a frame (control frames too) may only fill what the message has left.
                limit = self._max_message_bytes - self._fragments_size
                if length > limit:
                    raise _Violation(MESSAGE_TOO_BIG, f"frame of {length} bytes exceeds {limit}")
                start = position + header
                if end - start < length:
                    self._needed = header + length
                    break
                position = start + length
                if first == _FINAL_TEXT and self._fragments is None:
                    payload = data[start:position]
                    if not _is_utf8(payload):
                        raise _Violation(INVALID_DATA, "a text message that is not UTF-8")
                    messages.append(payload)
                elif self._frame(first, data[start:position], messages, replies):
                    break  # a close frame: nothing after it counts
        finally:
            if self.close is None:
                self._unparsed = data[position:] if position else data

    def _frame(self, first: int, payload: bytes, messages: list[bytes], replies: list[bytes]) -> bool:
        """Any frame but an unfragmented text message (the fast path). Returns True for a close frame."""
        if first & 0x70:
            raise _Violation(PROTOCOL_ERROR, "reserved bits set in a frame (no extension was negotiated)")
        final = bool(first & 0x80)
        opcode = first & 0x0F
        if opcode >= OP_CLOSE and (not final or len(payload) > _MAX_CONTROL_PAYLOAD):
            raise _Violation(PROTOCOL_ERROR, "a control frame was fragmented or longer than 125 bytes")
        if opcode == OP_TEXT or opcode == OP_BINARY:
            if self._fragments is not None:
                raise _Violation(PROTOCOL_ERROR, "a new message began before the fragmented one ended")
            if final:
                if opcode == OP_TEXT and not _is_utf8(payload):
                    raise _Violation(INVALID_DATA, "a text message that is not UTF-8")
                messages.append(payload)
            else:
                self._fragments = [payload]
                self._fragments_size = len(payload)
                self._fragments_text = opcode == OP_TEXT
            return False
        if opcode == OP_CONTINUATION:
            if self._fragments is None:
                raise _Violation(PROTOCOL_ERROR, "a continuation frame without a message to continue")
            self._fragments.append(payload)
            self._fragments_size += len(payload)
            if final:
                message = b"".join(self._fragments)
                self._fragments = None
                self._fragments_size = 0
                if self._fragments_text and not _is_utf8(message):
                    raise _Violation(INVALID_DATA, "a text message that is not UTF-8")
                messages.append(message)
            return False
        if opcode == OP_PING:
            replies.append(client_frame(OP_PONG, payload))
        elif opcode == OP_CLOSE:
            close = self._close_frame(payload)
            if self._fragments is not None:
                raise _Violation(PROTOCOL_ERROR, "a close frame in the middle of a fragmented message")
            # Echoed as received (RFC 6455 §5.5.1); the server then ends the TCP connection.
            replies.append(client_frame(OP_CLOSE, payload))
            self._end(close)
            return True
        return False

    @staticmethod
    def _close_frame(payload: bytes) -> Close:
        if not payload:
            return Close(NO_STATUS_RECEIVED, "")
        if len(payload) == 1:
            raise _Violation(PROTOCOL_ERROR, "a close frame with a one-byte payload")
        try:
            reason = payload[2:].decode("utf-8")
        except UnicodeDecodeError:
            raise _Violation(INVALID_DATA, "a close reason that is not UTF-8") from None
        code = int.from_bytes(payload[:2], "big")
        if not _sendable_close_code(code):
            raise _Violation(PROTOCOL_ERROR, f"close code {code} is not one a peer may send")
        return Close(code, reason)


def client_frame(opcode: int, payload: bytes) -> bytes:
    """One final frame as a client must send it: masked with a fresh random key."""
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
