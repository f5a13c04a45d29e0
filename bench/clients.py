"""The bench's measuring clients: feed subscribers and an exchange tap, on asyncio + ``websockets``.

``websockets``' asyncio client is the fastest Python client on this machine (~159k frames/s, STACK-NOTES), so
the clients are not what limits the measurement. Subscribers count trades without parsing (occurrences of
``"trade_id"`` in the frame's bytes), which works for the project's coalesced frames and the baseline's one
frame per trade alike; the latency clients parse and match trades by (symbol, trade id).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import attrs
import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

SUBSCRIBE_ALL = orjson.dumps({"op": "subscribe", "channel": "ticks", "symbols": ["*"]})
_TRADE_MARK = b'"trade_id"'


@attrs.define
class Subscriber:
    """One feed connection's tally; ``closed`` says why the server ended it (e.g. ``1013 ...``)."""

    ticks: int = 0
    frames: int = 0
    first_tick_at: float | None = None
    closed: str | None = None


async def _open_feed(ws_url: str, symbols: Sequence[str] | None) -> tuple[ClientConnection, bytes]:
    """A subscribed feed connection and the first frame after the subscription (its ack, or data)."""
    websocket = await connect(ws_url, max_size=None, ping_interval=None, compression=None, open_timeout=30)
    message = SUBSCRIBE_ALL if symbols is None else orjson.dumps(
        {"op": "subscribe", "channel": "ticks", "symbols": list(symbols)}
    )
    await websocket.send(message.decode())
    first = await asyncio.wait_for(websocket.recv(decode=False), 30)
    return websocket, first


def _tally_frame(frame: bytes, tally: Subscriber) -> None:
    found = frame.count(_TRADE_MARK)
    if found:
        if tally.first_tick_at is None:
            tally.first_tick_at = time.perf_counter()
        tally.ticks += found
        tally.frames += 1


async def _count(websocket: ClientConnection, first: bytes, tally: Subscriber) -> None:
    _tally_frame(first, tally)
    try:
        while True:
            _tally_frame(await websocket.recv(decode=False), tally)
    except ConnectionClosed as error:
        received = error.rcvd
        tally.closed = f"{received.code} {received.reason}" if received is not None else "no close frame"


class FeedSubscribers:
    """``count`` subscribers of a feed, counting trades until closed."""

    def __init__(self, ws_url: str, count: int, symbols: Sequence[str] | None = None) -> None:
        self.ws_url = ws_url
        self.count = count
        self.symbols = symbols
        self.tallies = [Subscriber() for _ in range(count)]
        self._connections: list[ClientConnection] = []
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> FeedSubscribers:
        """Returns once every subscriber is connected and its subscription answered."""
        # Connect in small groups: a burst of 100 handshakes is itself a load the server must absorb.
        for start in range(0, self.count, 20):
            group = range(start, min(self.count, start + 20))
            opened = await asyncio.gather(*(_open_feed(self.ws_url, self.symbols) for _ in group))
            for index, (websocket, first) in zip(group, opened, strict=True):
                self._connections.append(websocket)
                self._tasks.append(asyncio.create_task(_count(websocket, first, self.tallies[index])))
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for task in self._tasks:
            task.cancel()
        # Abort, not close: a closing handshake would queue behind megabytes of unread frames.
        for websocket in self._connections:
            websocket.transport.abort()

    def totals(self) -> list[int]:
        return [tally.ticks for tally in self.tallies]

    def cut_off(self) -> list[str]:
        return [tally.closed for tally in self.tallies if tally.closed is not None]


@attrs.define
class LatencyProbe:
    """Arrival times (perf_counter ns) of each trade at the exchange tap and at the feed subscriber."""

    tap: dict[tuple[str, int], int] = attrs.field(factory=dict)
    feed: dict[tuple[str, int], int] = attrs.field(factory=dict)
    # The tap records during the window; the feed goes on a little longer so late trades still match.
    tap_recording: bool = False
    feed_recording: bool = False

    def latencies_ms(self) -> list[float]:
        return sorted((self.feed[key] - self.tap[key]) / 1e6 for key in self.feed.keys() & self.tap.keys())

    def missing(self) -> int:
        """Trades the tap saw in the window that never reached the feed subscriber."""
        return len(self.tap.keys() - self.feed.keys())


async def tap_exchange(stream_url: str, probe: LatencyProbe) -> None:
    """The reference clock: when each trade reached a client of the simulator directly."""
    async with connect(stream_url, max_size=None, ping_interval=None, compression=None) as websocket:
        while True:
            frame = await websocket.recv(decode=False)
            now = time.perf_counter_ns()
            if probe.tap_recording:
                data = orjson.loads(frame).get("data", {})
                if data.get("e") == "trade":
                    probe.tap[(data["s"], data["t"])] = now


async def read_feed(websocket: ClientConnection, probe: LatencyProbe) -> None:
    while True:
        frame = await websocket.recv(decode=False)
        now = time.perf_counter_ns()
        if probe.feed_recording and _TRADE_MARK in frame:
            message = orjson.loads(frame)
            for tick in message.get("data", ()):
                probe.feed[(tick["symbol"], tick["trade_id"])] = now


async def measure_latency(stream_url: str, feed_url: str, warmup: float, duration: float) -> LatencyProbe:
    """Arrivals of trades at the exchange tap and at the feed subscriber over ``duration`` s."""
    probe = LatencyProbe()
    feed, _ = await _open_feed(feed_url, None)
    tasks = [asyncio.create_task(tap_exchange(stream_url, probe)), asyncio.create_task(read_feed(feed, probe))]
    try:
        await asyncio.sleep(warmup)
        probe.feed_recording = probe.tap_recording = True
        await asyncio.sleep(duration)
        probe.tap_recording = False
        # Let trades already sent arrive at the subscriber.
        await asyncio.sleep(1.0)
        probe.feed_recording = False
    finally:
        for task in tasks:
            task.cancel()
        feed.transport.abort()
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            raise RuntimeError(f"latency client failed: {task.exception()!r}")
    return probe


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return float("nan")
    rank = max(0, min(len(sorted_values) - 1, round(fraction * len(sorted_values) + 0.5) - 1))
    return sorted_values[rank]
