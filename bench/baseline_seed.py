"""The seed document's design, built as it describes it, for the benchmark to compare against.

asyncio and the ``websockets`` client read Binance's combined trade stream; each frame is decoded with
``json.loads`` into a float ``Tick`` dataclass and put into a tick store guarded by a ``threading.RLock``; the store
calls its registered callbacks inline: an OHLC aggregator (float candles per symbol and interval) and the
WebSocket server's broadcaster, which serialises the tick once with ``json.dumps`` and forwards it, one frame
per tick, to every subscriber (an unbounded queue and a sender task per subscriber, as the seed does).

It speaks the project's feed protocol so the bench measures both with the same client: a subscriber sends
``{"op": "subscribe", "channel": "ticks", "symbols": ["*"]}`` (or a list of symbols) to ``/ws`` and receives
``{"channel": "ticks", "data": [tick]}`` frames. ``{"op": "stats"}`` answers with the counters (the bench's
probe of ingest capacity). Ready once listening: it prints one JSON line ``{"ws_url": ...}`` on stdout.

Run: ``python -m bench.baseline_seed --url ws://127.0.0.1:PORT --symbols BTCUSDT,ETHUSDT --port 0``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

log = logging.getLogger("bench.baseline_seed")

INTERVAL_SECONDS = {"1s": 1, "1m": 60, "5m": 300, "15m": 900, "1h": 3600, "4h": 14_400, "1d": 86_400}


@dataclass
class Tick:
    symbol: str
    price: float
    quantity: float
    timestamp: datetime
    event_time: datetime
    trade_id: int
    is_buyer_maker: bool

    def to_dict(self) -> dict[str, object]:
        return {
            "symbol": self.symbol,
            "price": self.price,
            "quantity": self.quantity,
            "timestamp": self.timestamp.isoformat(),
            "event_time": self.event_time.isoformat(),
            "trade_id": self.trade_id,
            "is_buyer_maker": self.is_buyer_maker,
        }


@dataclass
class Candle:
    symbol: str
    interval: str
    open_time: datetime
    open: float
    high: float
    low: float
    close: float
    volume: float
    trade_count: int


TickCallback = Callable[[Tick], None]


class TickStore:
    """Latest tick per symbol behind a re-entrant lock; notifies callbacks on every update."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._latest: dict[str, Tick] = {}
        self._callbacks: list[TickCallback] = []
        self.ticks_received = 0

    def register(self, callback: TickCallback) -> None:
        with self._lock:
            self._callbacks.append(callback)

    def update(self, tick: Tick) -> None:
        with self._lock:
            self._latest[tick.symbol] = tick
            self.ticks_received += 1
            callbacks = list(self._callbacks)
        for callback in callbacks:
            try:
                callback(tick)
            except Exception:
                log.exception("callback failed")

    def latest(self) -> dict[str, Tick]:
        with self._lock:
            return dict(self._latest)


class OHLCAggregator:
    """Float OHLC candles per (symbol, interval), updated by the store's callback."""

    def __init__(self, intervals: Sequence[str]) -> None:
        self.intervals = list(intervals)
        self.candles: dict[tuple[str, str], Candle] = {}
        self.closed: list[Candle] = []

    def on_tick(self, tick: Tick) -> None:
        epoch = tick.timestamp.timestamp()
        for interval in self.intervals:
            seconds = INTERVAL_SECONDS[interval]
            open_time = datetime.fromtimestamp(epoch - epoch % seconds, UTC)
            key = (tick.symbol, interval)
            candle = self.candles.get(key)
            if candle is not None and candle.open_time != open_time:
                self.closed.append(candle)
                # The seed keeps closed candles in memory; the bench must not grow without bound.
                if len(self.closed) > 10_000:
                    del self.closed[:5_000]
                candle = None
            if candle is None:
                self.candles[key] = Candle(tick.symbol, interval, open_time, tick.price, tick.price, tick.price,
                                           tick.price, tick.quantity, 1)
            else:
                candle.high = max(candle.high, tick.price)
                candle.low = min(candle.low, tick.price)
                candle.close = tick.price
                candle.volume += tick.quantity
                candle.trade_count += 1


class Broadcaster:
    """The WebSocket server's side: every tick, as JSON, to every subscriber that asked for its symbol."""

    def __init__(self) -> None:
        self.subscribers: dict[ServerConnection, tuple[asyncio.Queue[str], set[str] | None]] = {}
        self.frames_sent = 0

    def on_tick(self, tick: Tick) -> None:
        if not self.subscribers:
            return
        message = json.dumps({"channel": "ticks", "data": [tick.to_dict()]})
        for queue, symbols in self.subscribers.values():
            if symbols is None or tick.symbol in symbols:
                queue.put_nowait(message)

    async def handle(self, websocket: ServerConnection, store: TickStore) -> None:
        queue: asyncio.Queue[str] = asyncio.Queue()
        sender = asyncio.create_task(self._send_loop(websocket, queue))
        try:
            async for message in websocket:
                request = json.loads(message)
                op = request.get("op")
                if op == "subscribe":
                    symbols = request.get("symbols") or ["*"]
                    self.subscribers[websocket] = (queue, None if "*" in symbols else set(symbols))
                    await websocket.send(json.dumps({"op": "subscribed", "channel": "ticks", "symbols": symbols}))
                elif op == "unsubscribe":
                    self.subscribers.pop(websocket, None)
                elif op == "stats":
                    await websocket.send(json.dumps({"op": "stats", "ticks": store.ticks_received,
                                                     "frames_sent": self.frames_sent,
                                                     "subscribers": len(self.subscribers)}))
        except ConnectionClosed:
            pass
        finally:
            self.subscribers.pop(websocket, None)
            sender.cancel()

    async def _send_loop(self, websocket: ServerConnection, queue: asyncio.Queue[str]) -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                message = await queue.get()
                await websocket.send(message)
                self.frames_sent += 1


def combined_stream_url(base_url: str, symbols: Sequence[str]) -> str:
    base = base_url.rstrip("/").removesuffix("/ws").removesuffix("/stream")
    return f"{base}/stream?streams=" + "/".join(f"{symbol.lower()}@trade" for symbol in symbols)


def tick_from_message(message: str | bytes) -> Tick | None:
    payload = json.loads(message)
    data = payload.get("data", payload)
    if data.get("e") != "trade":
        return None
    return Tick(
        symbol=data["s"],
        price=float(data["p"]),
        quantity=float(data["q"]),
        timestamp=datetime.fromtimestamp(data["T"] / 1000, UTC),
        event_time=datetime.fromtimestamp(data["E"] / 1000, UTC),
        trade_id=data["t"],
        is_buyer_maker=data["m"],
    )


async def binance_client(url: str, store: TickStore) -> None:
    """The seed's exchange client: reconnect after a fixed pause, parse, hand each tick to the store."""
    while True:
        try:
            async with connect(url, max_size=None) as websocket:
                async for message in websocket:
                    tick = tick_from_message(message)
                    if tick is not None:
                        store.update(tick)
        except (OSError, ConnectionClosed) as error:
            log.warning("disconnected: %r; reconnecting in 1 s", error)
        await asyncio.sleep(1)


async def main_async(url: str, symbols: Sequence[str], host: str, port: int, intervals: Sequence[str]) -> None:
    store = TickStore()
    aggregator = OHLCAggregator(intervals)
    broadcaster = Broadcaster()
    store.register(aggregator.on_tick)
    store.register(broadcaster.on_tick)

    async def handler(websocket: ServerConnection) -> None:
        await broadcaster.handle(websocket, store)

    stop = asyncio.get_running_loop().create_future()
    for signum in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set_result, None)
    server = await serve(handler, host, port, max_size=None)
    bound_port = next(iter(server.sockets)).getsockname()[1]
    print(json.dumps({"ws_url": f"ws://{host}:{bound_port}/ws"}), flush=True)
    client = asyncio.create_task(binance_client(combined_stream_url(url, symbols), store))
    await stop
    client.cancel()
    # Subscribers may have megabytes queued (the seed's queues are unbounded): do not wait for them.
    server.close(close_connections=False)
    for connection in list(broadcaster.subscribers):
        connection.transport.abort()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.baseline_seed", description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="the simulator's WebSocket base URL (ws://host:port)")
    parser.add_argument("--symbols", required=True, help="comma-separated symbols")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--intervals", default="1m,5m,1h")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    asyncio.run(main_async(args.url, args.symbols.split(","), args.host, args.port, args.intervals.split(",")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
