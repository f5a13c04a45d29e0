"""The store's candle query: memory, the database and the open candle merged with Binance's klines rules."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal

import pytest

from app.intervals import Interval
from app.model import Candle, Tick
from app.store.aggregator import CandleFeed
from app.store.candle_query import query_candles
from app.store.sqlite import SQLiteStorage

MINUTE = Interval("1m")
T0 = 1_723_161_300_000  # 2024-08-08 23:55 UTC


def trade(minute: int, trade_id: int, price: str) -> Tick:
    time_ms = T0 + minute * 60_000 + 1_000
    return Tick("BTCUSDT", Decimal(price), Decimal("1"), time_ms, time_ms, trade_id, False)


@pytest.fixture
async def storage() -> AsyncIterator[SQLiteStorage]:
    storage = await SQLiteStorage.open(":memory:")
    yield storage
    await storage.close()


async def test_old_candles_come_from_the_database_new_ones_from_memory_and_the_open_one_last(
    storage: SQLiteStorage,
) -> None:
    feed = CandleFeed([MINUTE], recent_limit=2)
    closed: list[Candle] = []
    for minute in range(6):
        closed += feed.builder.update(trade(minute, 100 + minute, f"{10 + minute}"))
    # Minutes 0-4 closed; the ring keeps the last two, the database has all of them (memory's revision wins).
    await storage.write_candles(closed)
    candles = await query_candles(feed, storage, "BTCUSDT", MINUTE, limit=10)
    assert [c.open_time_ms for c in candles] == [T0 + minute * 60_000 for minute in range(6)]
    assert [c.closed for c in candles] == [True] * 5 + [False]
    assert [c.close for c in candles] == [Decimal(10 + minute) for minute in range(6)]

    last_two = await query_candles(feed, storage, "BTCUSDT", MINUTE, limit=2)
    assert [c.open_time_ms for c in last_two] == [T0 + 4 * 60_000, T0 + 5 * 60_000]
    from_start = await query_candles(feed, storage, "BTCUSDT", MINUTE, start_ms=T0 + 60_000, limit=2)
    assert [c.open_time_ms for c in from_start] == [T0 + 60_000, T0 + 2 * 60_000]
    bounded = await query_candles(feed, storage, "BTCUSDT", MINUTE, start_ms=T0, end_ms=T0 + 2 * 60_000, limit=10)
    assert [c.open_time_ms for c in bounded] == [T0, T0 + 60_000, T0 + 2 * 60_000]


async def test_a_newer_revision_in_memory_replaces_the_stored_one(storage: SQLiteStorage) -> None:
    feed = CandleFeed([MINUTE])
    closed = feed.builder.update(trade(0, 100, "10")) + feed.builder.update(trade(1, 101, "11"))
    await storage.write_candles(closed)
    # A late trade of minute 0 revises its candle in memory; the database still has revision 0.
    revised = feed.builder.update(trade(0, 99, "9"))
    assert [c.revision for c in revised] == [1]
    candles = await query_candles(feed, storage, "BTCUSDT", MINUTE, limit=10)
    assert (candles[0].revision, candles[0].low, candles[0].trade_count) == (1, Decimal("9"), 2)
