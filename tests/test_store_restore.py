"""Restart recovery against a real SQLite database: whatever was on disk when the process died, the restored
builder plus the resumed trades end exactly where an uninterrupted one does."""

from __future__ import annotations

import random
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from app.intervals import Interval
from app.model import Candle, Tick
from app.store.candles import CandleBuilder, merge_closed
from app.store.restore import restore
from app.store.sqlite import SQLiteStorage

INTERVALS = [Interval(name) for name in ("1m", "3m", "5m", "1h", "1d", "1w", "1M")]
T0 = 1_723_161_300_000  # 2024-08-08 23:55 UTC, so the day and the month both turn


def history(seed: int, count: int = 400) -> list[Tick]:
    """Trades of two symbols over ~20 minutes with quiet stretches (empty intervals)."""
    dice = random.Random(seed)
    ticks, time_ms, ids = [], T0, {"BTCUSDT": 1000, "ETHUSDT": 5000}
    for _ in range(count):
        time_ms += dice.choice([0, 5, 700, 1500, 20_000, 61_000])
        symbol = dice.choice(list(ids))
        ids[symbol] += 1
        price, quantity = Decimal(dice.randint(1, 10**6)).scaleb(-2), Decimal(dice.randint(1, 10**5)).scaleb(-5)
        ticks.append(Tick(symbol, price, quantity, time_ms, time_ms, ids[symbol], dice.random() < 0.5))
    return ticks


def state(builder: CandleBuilder, closed: list[Candle]) -> tuple[list[Candle], list[Candle | None]]:
    opens = [builder.open_candle(symbol, interval.name) for symbol in ("BTCUSDT", "ETHUSDT") for interval in INTERVALS]
    return sorted(merge_closed(closed), key=lambda c: (c.symbol, c.interval, c.open_time_ms)), opens


@settings(max_examples=30)
@given(seed=st.integers(0, 1000), ticks_stored=st.integers(0, 400), candles_lag=st.integers(-50, 400))
async def test_restart_after_any_crash_point_ends_like_an_uninterrupted_run(
    seed: int, ticks_stored: int, candles_lag: int
) -> None:
    """The process died with ``ticks_stored`` ticks on disk and the candles closed by the first
    ``ticks_stored - candles_lag`` ticks (the candle writer behind, or ahead of, the tick writer)."""
    ticks = history(seed)
    reference = CandleBuilder(INTERVALS)
    reference_closed = reference.update_many(ticks)

    crashed = CandleBuilder(INTERVALS)
    candles_upto = max(0, min(len(ticks), ticks_stored - candles_lag))
    candles_on_disk = crashed.update_many(ticks[:candles_upto])
    storage = await SQLiteStorage.open(":memory:")
    await storage.write_ticks(ticks[:ticks_stored])
    await storage.write_candles(candles_on_disk)

    restarted = CandleBuilder(INTERVALS)
    restored = await restore(storage, restarted, ["BTCUSDT", "ETHUSDT"])
    await storage.write_candles(restored.recovered)
    # The ingest resumes after the last stored trade id of each symbol.
    resumed = [t for t in ticks if t.trade_id > restored.resume_from.get(t.symbol, -1)]
    emitted = candles_on_disk + restored.recovered + restarted.update_many(resumed)

    assert state(restarted, emitted) == state(reference, reference_closed)
    assert restarted.counters.late_trades == 0
    stored = [c for symbol in ("BTCUSDT", "ETHUSDT") for interval in INTERVALS
              for c in await storage.candles(symbol, interval.name, None, None, 10_000)]
    # Every candle closed so far is on disk once recovered ones are written (the rest are written live).
    assert {(c.symbol, c.interval, c.open_time_ms) for c in merge_closed(candles_on_disk + restored.recovered)} == {
        (c.symbol, c.interval, c.open_time_ms) for c in stored}
    await storage.close()


async def test_restore_of_an_empty_database_changes_nothing() -> None:
    storage = await SQLiteStorage.open(":memory:")
    builder = CandleBuilder(INTERVALS)
    restored = await restore(storage, builder, ["BTCUSDT"])
    assert (restored.resume_from, restored.recovered, restored.ticks_replayed) == ({}, [], 0)
    assert builder.open_candle("BTCUSDT", "1m") is None
    await storage.close()


async def test_the_recent_candles_are_reloaded_for_the_api() -> None:
    ticks = history(7)
    builder = CandleBuilder(INTERVALS)
    closed = builder.update_many(ticks)
    storage = await SQLiteStorage.open(":memory:")
    await storage.write_ticks(ticks)
    await storage.write_candles(closed)
    restarted = CandleBuilder(INTERVALS)
    await restore(storage, restarted, ["BTCUSDT", "ETHUSDT"])
    for interval in INTERVALS:
        assert restarted.recent_closed("BTCUSDT", interval.name, None, None, 50) == builder.recent_closed(
            "BTCUSDT", interval.name, None, None, 50)
    await storage.close()


async def test_long_open_candles_are_rebuilt_without_the_ticks_pruning_removed() -> None:
    """With 1M configured, pruning keeps ticks only from ``earliest_open_time_ms`` (the current 1m candle
    here); the open 1d, 1w and 1M candles are rebuilt from stored finer candles."""
    intervals = [Interval(name) for name in ("1m", "1h", "1d", "1w", "1M")]
    dice = random.Random(3)
    ticks = [Tick("BTCUSDT", Decimal(dice.randint(100, 999)), Decimal("0.5"), T0 + n * 600_000 + dice.randint(0, 9),
                  T0 + n * 600_000, n, n % 2 == 0) for n in range(600)]  # ten minutes apart, over four days
    reference = CandleBuilder(intervals)
    closed = reference.update_many(ticks)
    storage = await SQLiteStorage.open(":memory:")
    await storage.write_ticks(ticks)
    await storage.write_candles(closed)
    keep_from = reference.earliest_open_time_ms()
    assert keep_from == reference.open_candle("BTCUSDT", "1m").open_time_ms  # type: ignore[union-attr]
    await storage.delete_ticks_before(keep_from, 10_000)
    restarted = CandleBuilder(intervals)
    restored = await restore(storage, restarted, ["BTCUSDT"])
    assert restored.ticks_replayed == 1 and restored.recovered == []
    for interval in intervals:
        assert restarted.open_candle("BTCUSDT", interval.name) == reference.open_candle("BTCUSDT", interval.name)
    await storage.close()
