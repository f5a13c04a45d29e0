"""Server-side WebSocket frames written by hand, for tests of the exchange socket and its frame reader."""

from __future__ import annotations

import struct

# First bytes: FIN + opcode.
TEXT, BINARY, CONTINUATION_FINAL, CLOSE, PING, PONG = 0x81, 0x82, 0x80, 0x88, 0x89, 0x8A


def frame(first_byte: int, payload: bytes) -> bytes:
    """A server frame (unmasked), as RFC 6455 §5.2 lays it out."""
    length = len(payload)
    if length < 126:
        return bytes((first_byte, length)) + payload
    if length < 1 << 16:
        return bytes((first_byte, 126)) + struct.pack("!H", length) + payload
    return bytes((first_byte, 127)) + struct.pack("!Q", length) + payload


def close_frame(code: int, reason: bytes = b"") -> bytes:
    return frame(CLOSE, struct.pack("!H", code) + reason)
