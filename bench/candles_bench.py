"""Row 5: the candle aggregator (pure, in-process) and SQLite persistence, on the simulator's synthetic trades."""

from __future__ import annotations

import gc
import time
import tracemalloc
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import trio

from app.intervals import Interval
from app.model import Candle, Tick
from app.replay.sources import SyntheticMarket
from app.store.candle_ring import ClosedRing
from app.store.candles import CandleBuilder
from app.store.sqlite import SQLiteStorage
from app.store.storage import Storage
from bench import baseline_seed

INTERVALS = ("1m", "5m", "15m", "1h", "4h", "1d")
WRITE_BATCH = 10_000


@attrs.frozen
class CandleFigures:
    aggregator_per_s: float
    baseline_aggregator_per_s: float
    tick_rows_per_s: float
    candle_rows_per_s: float


def synthetic_ticks(count: int, symbols: int = 8, rate: float = 1_000.0) -> list[Tick]:
    # 1,000 arrivals/s of market time by default: the trades span minutes, so candles open and close.
    market = SyntheticMarket(symbols=symbols, rate=rate, seed=5, start_ms=1_723_161_255_000)
    ticks: list[Tick] = []
    for scheduled in market:
        assert scheduled.event.tick is not None
        ticks.append(scheduled.event.tick)
        if len(ticks) >= count:
            return ticks
    return ticks


def time_aggregator(ticks: list[Tick]) -> float:
    builder = CandleBuilder(tuple(Interval(name) for name in INTERVALS))
    update = builder.update
    started = time.perf_counter()
    for tick in ticks:
        update(tick)
    return len(ticks) / (time.perf_counter() - started)


def time_baseline_aggregator(ticks: list[Tick]) -> float:
    seed_ticks = [
        baseline_seed.Tick(t.symbol, float(t.price), float(t.quantity),
                           datetime.fromtimestamp(t.trade_time_ms / 1000, UTC),
                           datetime.fromtimestamp(t.event_time_ms / 1000, UTC), t.trade_id, t.is_buyer_maker)
        for t in ticks
    ]
    aggregator = baseline_seed.OHLCAggregator(INTERVALS)
    started = time.perf_counter()
    for tick in seed_ticks:
        aggregator.on_tick(tick)
    return len(seed_ticks) / (time.perf_counter() - started)


_DECIMAL_FIELDS = tuple(field.name for field in attrs.fields(Candle) if field.type in (Decimal, "Decimal"))


def closed_candles(ticks: list[Tick]) -> list[Candle]:
    """The closed candles the builder makes of ``ticks``."""
    return [candle for candle in CandleBuilder(tuple(Interval(name) for name in INTERVALS)).update_many(ticks)
            if candle.closed]


def _own_decimals(candle: Candle) -> Candle:
    # A running service's candles hold Decimals of their own: the ticks they came from are gone.
    fresh: dict[str, Any] = {name: Decimal(str(getattr(candle, name))) for name in _DECIMAL_FIELDS}
    return attrs.evolve(candle, **fresh)


def _traced_bytes(fill: Callable[[], object]) -> int:
    """Bytes allocated by ``fill`` and still held once it returns (tracemalloc); what it returns is kept alive
    until then."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = fill()
        gc.collect()  # garbage waiting for the cyclic collector is not kept
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    del kept
    return after - before


def closed_candle_bytes(candles: list[Candle]) -> tuple[float, float]:
    """Bytes per closed candle held in memory, on the same candles: (packed records in a ``ClosedRing``, as the
    project keeps them; ``Candle`` objects in a deque, as it kept them before)."""
    def packed() -> ClosedRing:
        ring = ClosedRing("BTCUSDT", "1m", len(candles))
        for candle in candles:
            ring.append(candle)
        return ring

    def as_objects() -> deque[Candle]:
        return deque((_own_decimals(candle) for candle in candles), maxlen=len(candles))

    count = max(1, len(candles))
    return _traced_bytes(packed) / count, _traced_bytes(as_objects) / count


def _candles(ticks: list[Tick]) -> list[Candle]:
    """One closed 1m candle per tick, each with its own open time: distinct rows, not updates."""
    return [
        Candle(symbol=tick.symbol, interval="1m", open_time_ms=index * 60_000, close_time_ms=index * 60_000 + 59_999,
               open=tick.price, high=tick.price, low=tick.price, close=tick.price, volume=tick.quantity,
               quote_volume=tick.price * tick.quantity, trade_count=1, taker_buy_volume=tick.quantity,
               taker_buy_quote_volume=tick.price * tick.quantity, first_trade_id=tick.trade_id,
               last_trade_id=tick.trade_id, closed=True)
        for index, tick in enumerate(ticks)
    ]


async def time_writes(ticks: list[Tick], open_storage: Callable[[], Awaitable[Storage]]) -> tuple[float, float]:
    """Ticks, then one closed candle per tick, written in ``WRITE_BATCH``-row batches: rows/s of each."""
    storage = await open_storage()
    try:
        started = time.perf_counter()
        for start in range(0, len(ticks), WRITE_BATCH):
            await storage.write_ticks(ticks[start : start + WRITE_BATCH])
        tick_rate = len(ticks) / (time.perf_counter() - started)
        candles = _candles(ticks)
        started = time.perf_counter()
        for start in range(0, len(candles), WRITE_BATCH):
            await storage.write_candles(candles[start : start + WRITE_BATCH])
        candle_rate = len(candles) / (time.perf_counter() - started)
    finally:
        await storage.close()
    return tick_rate, candle_rate


def measure(ticks: list[Tick], candle_ticks: int, persist_rows: int, workdir: Path) -> CandleFigures:
    """One run over ``ticks`` (``synthetic_ticks(max(candle_ticks, persist_rows))``, made once for all runs)."""
    aggregator = time_aggregator(ticks[:candle_ticks])
    baseline = time_baseline_aggregator(ticks[:candle_ticks])
    path = workdir / f"persist-{time.monotonic_ns()}.sqlite3"
    tick_rows, candle_rows = trio.run(time_writes, ticks[:persist_rows], partial(SQLiteStorage.open, str(path)))
    return CandleFigures(aggregator, baseline, tick_rows, candle_rows)


def closed_candle_memory(tick_count: int) -> tuple[int, float, float]:
    """(candles, packed bytes each, object bytes each) for the closed candles of a market slow enough that they
    hold hundreds of trades each (long exact volumes)."""
    candles = closed_candles(synthetic_ticks(tick_count, symbols=20, rate=100.0))
    return (len(candles), *closed_candle_bytes(candles))
