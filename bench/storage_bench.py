"""Row 5, storage figures: PostgreSQL persistence rows/s (a fresh database, dropped after), the memory a tick
held for a failing database costs, and the start-up check of an SQLite file (WAL and ``quick_check``)."""

from __future__ import annotations

import os
import time
import tracemalloc
import uuid
from decimal import Decimal
from functools import partial
from pathlib import Path

import attrs
import psycopg
import trio

from app.model import Tick
from app.store.postgres import PostgresStorage
from app.store.sqlite import SQLiteStorage
from app.store.sqlite_check import check_database_file
from bench.candles_bench import WRITE_BATCH, time_writes

ADMIN_URL = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


@attrs.frozen
class StorageFigures:
    postgres_tick_rows_per_s: float | None
    postgres_candle_rows_per_s: float | None
    bytes_per_held_tick: float
    check_seconds: float
    check_megabytes: float


def bytes_per_held_tick(ticks: list[Tick]) -> float:
    """What the writer's backlog holds per tick: a tick as parsed from the wire (its own Decimals) in a list."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        held = [Tick(t.symbol, Decimal(str(t.price)), Decimal(str(t.quantity)), t.trade_time_ms + 0,
                     t.event_time_ms + 0, t.trade_id + 0, t.is_buyer_maker) for t in ticks]
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert len(held) == len(ticks)
    return (after - before) / len(ticks)


async def _fill_sqlite(path: Path, ticks: list[Tick]) -> None:
    storage = await SQLiteStorage.open(str(path))
    for start in range(0, len(ticks), WRITE_BATCH):
        await storage.write_ticks(ticks[start:start + WRITE_BATCH])
    await storage.close()


def time_start_up_check(ticks: list[Tick], workdir: Path) -> tuple[float, float]:
    """Seconds and megabytes of ``check_database_file`` on a closed database holding ``ticks``."""
    path = workdir / f"check-{time.monotonic_ns()}.sqlite3"
    trio.run(_fill_sqlite, path, ticks)
    started = time.perf_counter()
    check_database_file(str(path))
    return time.perf_counter() - started, path.stat().st_size / 1e6


def time_postgres(ticks: list[Tick]) -> tuple[float, float] | None:
    """Ticks and candles rows/s into a fresh PostgreSQL database; None when no server answers."""
    name = f"marketdata_bench_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError:
        return None
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            url = ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
            return trio.run(time_writes, ticks, partial(PostgresStorage.open, url))
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def measure(ticks: list[Tick], workdir: Path) -> StorageFigures:
    postgres = time_postgres(ticks)
    seconds, megabytes = time_start_up_check(ticks, workdir)
    return StorageFigures(
        postgres_tick_rows_per_s=None if postgres is None else postgres[0],
        postgres_candle_rows_per_s=None if postgres is None else postgres[1],
        bytes_per_held_tick=bytes_per_held_tick(ticks),
        check_seconds=seconds,
        check_megabytes=megabytes,
    )
