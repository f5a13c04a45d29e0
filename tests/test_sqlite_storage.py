"""SQLite storage: WAL, migrations, refused files, failed writes, statement reuse (the behaviour both backends
share is in test_storage_contract.py)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from test_storage_contract import T0, tick

from app.store.sqlite import MIGRATIONS, SCHEMA_VERSION, SQLiteStorage, connect
from app.store.storage import StorageError, StorageWriteError


async def test_a_new_database_is_created_in_wal_mode_at_the_latest_schema(tmp_path: Path) -> None:
    storage = await SQLiteStorage.open(str(tmp_path / "new.sqlite3"))
    await storage.close()
    with sqlite3.connect(tmp_path / "new.sqlite3") as connection:
        assert connection.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
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
