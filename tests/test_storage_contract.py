"""The Storage contract, run against every backend: SQLite (a file) and PostgreSQL (a fresh database per test,
skipped where no server answers). Exact round trips, Binance's paging rules, revisions, pruning, symbols."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import attrs
import pytest
from postgres_server import fresh_database

from app.model import Candle, Tick
from app.store.postgres import PostgresStorage
from app.store.sqlite import SQLiteStorage
from app.store.storage import Storage

T0 = 1_723_161_300_000  # 2024-08-08 23:55 UTC
MINUTE = 60_000


def tick(trade_id: int, time_ms: int, symbol: str = "BTCUSDT") -> Tick:
    return Tick(symbol, Decimal("61829.76000000"), Decimal("0.00012000"), time_ms, time_ms + 1, trade_id,
                trade_id % 2 == 0)


def candle(open_ms: int, revision: int = 0, close: str = "10.5", symbol: str = "BTCUSDT") -> Candle:
    return Candle(symbol, "1m", open_ms, open_ms + MINUTE - 1, Decimal("10.00000000"), Decimal("11"),
                  Decimal("9.99"), Decimal(close), Decimal("3.5"), Decimal("35.123456789012345678"), 3,
                  Decimal("0E-8"), Decimal("0"), 1, 3, closed=True, revision=revision)


@pytest.fixture(params=["sqlite", "postgres"])
async def storage(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Storage]:
    opened: Storage
    if request.param == "sqlite":
        opened = await SQLiteStorage.open(str(tmp_path / "db.sqlite3"))
        yield opened
        await opened.close()
        return
    with fresh_database() as url:
        opened = await PostgresStorage.open(url)
        yield opened
        await opened.close()


async def test_ticks_and_candles_round_trip_exactly(storage: Storage) -> None:
    ticks = [tick(1, T0), tick(2, T0 + 5), tick(3, T0 + 5, "ETHUSDT")]
    await storage.write_ticks(ticks)
    await storage.write_ticks(ticks[:1])  # stored once only
    assert await storage.ticks("BTCUSDT", T0, -1, 10) == ticks[:2]
    assert await storage.last_trade_ids() == {"BTCUSDT": 2, "ETHUSDT": 3}
    written = candle(T0)
    await storage.write_candles([written])
    (read,) = await storage.candles("BTCUSDT", "1m", None, None, 10)
    assert read == written
    assert str(read.quote_volume) == "35.123456789012345678" and str(read.open) == "10.00000000"


async def test_ticks_page_by_trade_id_from_a_time(storage: Storage) -> None:
    await storage.write_ticks([tick(trade_id, T0 + trade_id * 1000) for trade_id in range(1, 101)])
    page = await storage.ticks("BTCUSDT", T0 + 50_000, -1, 20)
    assert [t.trade_id for t in page] == list(range(50, 70))
    page = await storage.ticks("BTCUSDT", T0 + 50_000, 69, 1000)
    assert [t.trade_id for t in page] == list(range(70, 101))
    assert await storage.ticks("BTCUSDT", T0 + 200_000, -1, 10) == []


async def test_candles_follow_binances_start_end_and_limit_rules(storage: Storage) -> None:
    await storage.write_candles([candle(T0 + minute * MINUTE) for minute in range(10)])
    await storage.write_candles([candle(T0, symbol="ETHUSDT")])

    async def opens(start: int | None, end: int | None, limit: int) -> list[int]:
        return [(c.open_time_ms - T0) // MINUTE for c in await storage.candles("BTCUSDT", "1m", start, end, limit)]

    assert await opens(None, None, 3) == [7, 8, 9]  # the latest, oldest first
    assert await opens(T0 + 2 * MINUTE, None, 3) == [2, 3, 4]  # the first from the start
    assert await opens(None, T0 + 4 * MINUTE, 2) == [3, 4]
    assert await opens(T0 + MINUTE, T0 + 3 * MINUTE, 100) == [1, 2, 3]
    assert await opens(T0 + 1, T0 + MINUTE, 100) == [1]  # start is compared with the open time


async def test_a_revision_replaces_a_candle_but_an_older_version_never_does(storage: Storage) -> None:
    await storage.write_candles([candle(T0, revision=0, close="1")])
    await storage.write_candles([candle(T0, revision=2, close="3")])
    await storage.write_candles([candle(T0, revision=1, close="2")])  # out of order: ignored
    (stored,) = await storage.candles("BTCUSDT", "1m", None, None, 5)
    assert (stored.revision, stored.close) == (2, 3)


async def test_pruning_deletes_old_ticks_in_bounded_chunks(storage: Storage) -> None:
    await storage.write_ticks([tick(trade_id, T0 + trade_id) for trade_id in range(1, 51)])
    assert await storage.delete_ticks_before(T0 + 31, 20) == 20
    assert await storage.delete_ticks_before(T0 + 31, 20) == 10
    assert await storage.delete_ticks_before(T0 + 31, 20) == 0
    assert [t.trade_id for t in await storage.ticks("BTCUSDT", 0, -1, 100)] == list(range(31, 51))


async def test_tick_batches_written_twice_or_overlapping_are_stored_once(storage: Storage) -> None:
    batch = [tick(trade_id, T0 + trade_id) for trade_id in range(1, 3001)]
    await storage.write_ticks(batch)
    await storage.write_ticks([*batch[1000:], tick(3001, T0 + 3001), tick(3001, T0 + 3001)])
    stored = await storage.ticks("BTCUSDT", 0, -1, 10_000)
    assert [t.trade_id for t in stored] == list(range(1, 3002)) and stored[:3000] == batch


async def test_two_revisions_of_one_candle_in_one_write_keep_the_higher(storage: Storage) -> None:
    await storage.write_candles([candle(T0, revision=1, close="2"), candle(T0, revision=0, close="1")])
    (stored,) = await storage.candles("BTCUSDT", "1m", None, None, 5)
    assert (stored.revision, stored.close) == (1, 2)


async def test_last_trade_ids_are_per_symbol(storage: Storage) -> None:
    assert await storage.last_trade_ids() == {}
    await storage.write_ticks([tick(trade_id, T0, symbol) for symbol in ("AAA", "BBB", "CCC")
                               for trade_id in range(1, 4 if symbol != "BBB" else 9)])
    assert await storage.last_trade_ids() == {"AAA": 3, "BBB": 8, "CCC": 3}


async def test_symbols_added_at_run_time_are_kept_until_removed(storage: Storage) -> None:
    assert await storage.added_symbols() == []
    await storage.set_symbol_added("SOLUSDT", True)
    await storage.set_symbol_added("ADAUSDT", True)
    await storage.set_symbol_added("SOLUSDT", True)  # added again: still once
    assert sorted(await storage.added_symbols()) == ["ADAUSDT", "SOLUSDT"]
    await storage.set_symbol_added("ADAUSDT", False)
    await storage.set_symbol_added("XRPUSDT", False)  # never added: nothing to remove
    assert await storage.added_symbols() == ["SOLUSDT"]


async def test_an_incomplete_candle_is_stored_as_incomplete_until_its_seeded_revision(storage: Storage) -> None:
    incomplete = attrs.evolve(candle(T0), complete=False)
    await storage.write_candles([incomplete])
    assert await storage.candles("BTCUSDT", "1m", None, None, 10) == [incomplete]
    seeded = attrs.evolve(incomplete, revision=1, complete=True, trade_count=7)
    await storage.write_candles([seeded])
    assert await storage.candles("BTCUSDT", "1m", None, None, 10) == [seeded]
