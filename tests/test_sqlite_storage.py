"""SQLite storage: migrations, exact round trips, Binance's paging rules, revisions, pruning, failed writes."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import pytest

from app.model import Candle, Tick
from app.store.sqlite import MIGRATIONS, SCHEMA_VERSION, SQLiteStorage, connect
from app.store.storage import StorageError, StorageWriteError

T0 = 1_723_161_300_000  # 2024-08-08 23:55 UTC
MINUTE = 60_000


def tick(trade_id: int, time_ms: int, symbol: str = "BTCUSDT") -> Tick:
    return Tick(symbol, Decimal("61829.76000000"), Decimal("0.00012000"), time_ms, time_ms + 1, trade_id,
                trade_id % 2 == 0)


def candle(open_ms: int, revision: int = 0, close: str = "10.5", symbol: str = "BTCUSDT") -> Candle:
    return Candle(symbol, "1m", open_ms, open_ms + MINUTE - 1, Decimal("10.00000000"), Decimal("11"),
                  Decimal("9.99"), Decimal(close), Decimal("3.5"), Decimal("35.123456789012345678"), 3,
                  Decimal("0E-8"), Decimal("0"), 1, 3, closed=True, revision=revision)


@pytest.fixture
async def storage(tmp_path: Path) -> AsyncIterator[SQLiteStorage]:
    opened = await SQLiteStorage.open(str(tmp_path / "db.sqlite3"))
    yield opened
    await opened.close()


async def test_a_new_database_is_created_in_wal_mode_at_the_latest_schema(tmp_path: Path) -> None:
    storage = await SQLiteStorage.open(str(tmp_path / "new.sqlite3"))
    await storage.close()
    with sqlite3.connect(tmp_path / "new.sqlite3") as connection:
        assert connection.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_a_version_1_database_is_migrated_keeping_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path, isolation_level=None) as connection:
        connection.executescript(f"BEGIN; {MIGRATIONS[1]} PRAGMA user_version=1; COMMIT;")
        connection.execute("INSERT INTO ticks VALUES ('BTCUSDT', 7, '1.5', '2', 100, 101, 0)")
    storage = await SQLiteStorage.open(str(path))
    assert await storage.last_trade_ids() == {"BTCUSDT": 7}
    await storage.close()
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        indexes = {row[1] for row in connection.execute("PRAGMA index_list(ticks)")}
        assert "ticks_by_symbol_time" in indexes


def test_a_database_from_a_newer_service_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "future.sqlite3"
    with sqlite3.connect(path) as connection:
        connection.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    with pytest.raises(StorageError, match="newer than this service"):
        connect(str(path))


def test_a_file_that_is_not_a_database_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("not a database, but enough text to fill a header page " * 100)
    with pytest.raises(StorageError, match="cannot open SQLite database"):
        connect(str(path))


async def test_ticks_and_candles_round_trip_exactly(storage: SQLiteStorage) -> None:
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


async def test_ticks_page_by_trade_id_from_a_time(storage: SQLiteStorage) -> None:
    await storage.write_ticks([tick(trade_id, T0 + trade_id * 1000) for trade_id in range(1, 101)])
    page = await storage.ticks("BTCUSDT", T0 + 50_000, -1, 20)
    assert [t.trade_id for t in page] == list(range(50, 70))
    page = await storage.ticks("BTCUSDT", T0 + 50_000, 69, 1000)
    assert [t.trade_id for t in page] == list(range(70, 101))
    assert await storage.ticks("BTCUSDT", T0 + 200_000, -1, 10) == []


async def test_candles_follow_binances_start_end_and_limit_rules(storage: SQLiteStorage) -> None:
    await storage.write_candles([candle(T0 + minute * MINUTE) for minute in range(10)])
    await storage.write_candles([candle(T0, symbol="ETHUSDT")])

    async def opens(start: int | None, end: int | None, limit: int) -> list[int]:
        return [(c.open_time_ms - T0) // MINUTE for c in await storage.candles("BTCUSDT", "1m", start, end, limit)]

    assert await opens(None, None, 3) == [7, 8, 9]  # the latest, oldest first
    assert await opens(T0 + 2 * MINUTE, None, 3) == [2, 3, 4]  # the first from the start
    assert await opens(None, T0 + 4 * MINUTE, 2) == [3, 4]
    assert await opens(T0 + MINUTE, T0 + 3 * MINUTE, 100) == [1, 2, 3]
    assert await opens(T0 + 1, T0 + MINUTE, 100) == [1]  # start is compared with the open time


async def test_a_revision_replaces_a_candle_but_an_older_version_never_does(storage: SQLiteStorage) -> None:
    await storage.write_candles([candle(T0, revision=0, close="1")])
    await storage.write_candles([candle(T0, revision=2, close="3")])
    await storage.write_candles([candle(T0, revision=1, close="2")])  # out of order: ignored
    (stored,) = await storage.candles("BTCUSDT", "1m", None, None, 5)
    assert (stored.revision, stored.close) == (2, 3)


async def test_pruning_deletes_old_ticks_in_bounded_chunks(storage: SQLiteStorage) -> None:
    await storage.write_ticks([tick(trade_id, T0 + trade_id) for trade_id in range(1, 51)])
    assert await storage.delete_ticks_before(T0 + 31, 20) == 20
    assert await storage.delete_ticks_before(T0 + 31, 20) == 10
    assert await storage.delete_ticks_before(T0 + 31, 20) == 0
    assert [t.trade_id for t in await storage.ticks("BTCUSDT", 0, -1, 100)] == list(range(31, 51))


async def test_a_write_to_a_full_disk_fails_cleanly_and_succeeds_later(tmp_path: Path) -> None:
    """A real SQLITE_FULL (the database capped by max_page_count): nothing half-written, a retry works."""
    storage = await SQLiteStorage.open(str(tmp_path / "full.sqlite3"))
    connection = storage._connection
    pages = connection.execute("PRAGMA page_count").fetchone()[0]
    connection.execute(f"PRAGMA max_page_count={pages + 2}")
    many = [tick(trade_id, T0 + trade_id) for trade_id in range(1, 5001)]
    with pytest.raises(StorageWriteError, match="full"):
        await storage.write_ticks(many)
    assert await storage.last_trade_ids() == {}  # rolled back: all or nothing
    connection.execute("PRAGMA max_page_count=1073741823")
    await storage.write_ticks(many)
    assert await storage.last_trade_ids() == {"BTCUSDT": 5000}
    await storage.close()


async def test_tick_batches_of_any_size_use_a_handful_of_distinct_statements(tmp_path: Path) -> None:
    # sqlite3 keeps 128 prepared statements; one per batch size once held ~50 MB of SQLite heap.
    connection = connect(str(tmp_path / "statements.sqlite3"))
    inserts: set[str] = set()
    connection.set_trace_callback(lambda sql: inserts.add(sql) if sql.startswith("INSERT") else None)
    storage = SQLiteStorage(connection)
    first = 0
    for size in [*range(1, 300, 7), 1023, 1024, 1025, 3000]:
        await storage.write_ticks([tick(first + number, first + number) for number in range(size)])
        first += size
    assert await storage.last_trade_ids() == {"BTCUSDT": first - 1}
    assert len(await storage.ticks("BTCUSDT", 0, -1, 100_000)) == first
    # Statements of 1, 2, 4, ... 1,024 ticks only (the trace shows them with their values expanded).
    assert len({sql.count("),(") for sql in inserts}) <= 11
    await storage.close()
