"""Faults the simulator injects: abrupt resets, malformed frames, per-frame random decisions, and REST answers
that go wrong."""

from __future__ import annotations

import enum
import random
import socket
import struct
from collections import deque

import trio

from app.replay.config import Faults

# A trade frame with every field of the wrong type.
_WRONG_TYPES = (
    '{"e":"trade","E":"soon","s":"BTCUSDT","t":"3735683259","p":61837.63,"q":null,'
    '"T":-1,"m":"yes","M":true}'
)
_WRONG_SHAPES = ("[1,2,3]", "null", '{"e":"trade"}', '"trade"', "{}")
_GARBAGE = ("\x00\x01\x02 garbage \ufffd", "not json at all", "")


def malformed_frame(rng: random.Random, template: str | None, *, combined: bool, stream: str) -> str:
    """One malformed frame, chosen at random: garbage, truncated JSON, wrong types, or the wrong shape."""
    kind = rng.randrange(4)
    if kind == 0:
        return rng.choice(_GARBAGE)
    if kind == 1:
        text = template or ('{"stream":"btcusdt@trade","data":' + _WRONG_TYPES + "}")
        return text[: rng.randrange(1, max(2, len(text) - 1))]
    payload = _WRONG_TYPES if kind == 2 else rng.choice(_WRONG_SHAPES)
    return f'{{"stream":"{stream}","data":{payload}}}' if combined else payload


class FaultDice:
    """Seeded per-frame decisions, so a faulty run repeats exactly with the same seed."""

    def __init__(self, faults: Faults) -> None:
        self.faults = faults
        self.rng = random.Random(faults.seed)

    @property
    def active(self) -> bool:
        return self.faults.drop_probability > 0 or self.faults.malformed_probability > 0

    def drop(self) -> bool:
        return self.faults.drop_probability > 0 and self.rng.random() < self.faults.drop_probability

    def malformed(self) -> bool:
        return self.faults.malformed_probability > 0 and self.rng.random() < self.faults.malformed_probability


async def reset_tcp(stream: trio.SocketStream) -> None:
    """Close with a TCP RST and no WebSocket close frame: SO_LINGER on with a zero timeout, then close."""
    try:
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass  # already closed by the peer: nothing left to reset
    await stream.aclose()


class RestFault(enum.Enum):
    """How one REST answer goes wrong."""

    # HTTP 503 with Binance's "-1001 DISCONNECTED" body (an internal error: "Please try again").
    SERVER_ERROR = "server_error"
    # No answer at all until the client gives up (the request's own timeout).
    TIMEOUT = "timeout"
    # HTTP 200 whose JSON body stops halfway (a consistent Content-Length: the cut is in the content).
    TRUNCATED_JSON = "truncated_json"
    # HTTP 200 with a body that is not JSON (an HTML error page from a proxy).
    INVALID_JSON = "invalid_json"
    # HTTP 200 with ``[]``: no trades, where the ids asked for exist (REST lagging the stream).
    EMPTY_LIST = "empty_list"


class RestFaults:
    """Faults queued per endpoint (``historicalTrades``, ``ticker/24hr`` ...): each request takes the next one."""

    def __init__(self) -> None:
        self._queued: dict[str, deque[RestFault]] = {}

    def add(self, endpoint: str, fault: RestFault, times: int = 1) -> None:
        self._queued.setdefault(endpoint, deque()).extend([fault] * times)

    def take(self, endpoint: str) -> RestFault | None:
        queued = self._queued.get(endpoint)
        return queued.popleft() if queued else None
