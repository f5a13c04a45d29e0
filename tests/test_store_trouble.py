"""The writers while the database fails, against real SQLite files (a second connection holding the write lock,
a real full disk: a 4 MiB tmpfs, a database capped by ``max_page_count``, a real ext4 that the kernel turns
read-only with I/O errors under the open database) and a real PostgreSQL server that stops accepting
connections to the service's database. (``chmod`` does not stop root, and a ``remount,ro`` is refused while
the database is open for writing: hence the tmpfs and ext4's own error trigger.)

Ingestion never waits for a failing database: the writer keeps reading its channel into a bounded backlog,
retries with backoff, and writes the backlog once the trouble ends; what does not fit is counted as unwritten.
"""

from __future__ import annotations

import errno
import logging
import sqlite3
import subprocess
from collections.abc import Callable, Iterator, Sequence
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
import trio
from postgres_server import admin_connection, fresh_database
from test_storage_contract import candle
from web_harness import make_ticks, running_web, wait_until

from app.backoff import Backoff, BackoffPolicy
from app.model import Candle, Tick
from app.store.persist import PersistStatus, persist_candles, persist_ticks
from app.store.postgres import PostgresStorage
from app.store.sqlite import SQLiteStorage
from app.store.storage import Storage

T0 = 1_723_161_300_000


def ticks(first: int, count: int, symbol: str = "BTCUSDT") -> list[Tick]:
    return [Tick(symbol, Decimal("61829.76"), Decimal("0.0012"), T0 + trade_id, T0 + trade_id, trade_id, False)
            for trade_id in range(first, first + count)]


def fast_backoff() -> Backoff:
    return Backoff(BackoffPolicy(start=0.01, cap=0.05))


async def send_all(channel: trio.MemorySendChannel[Sequence[Tick]], sent: Sequence[Tick], batch: int = 500) -> None:
    for start in range(0, len(sent), batch):
        await channel.send(sent[start:start + batch])


def stored_ids(path: Path) -> list[int]:
    with sqlite3.connect(path) as connection:
        return [row[0] for row in connection.execute("SELECT trade_id FROM ticks ORDER BY trade_id")]


async def write_through_trouble(
    storage: Storage, sent: Sequence[Tick], end_trouble: Callable[[], object], expected_error: str
) -> PersistStatus:
    """Runs the tick writer over ``sent`` while the database fails. Once every tick waits in memory (the small
    channel means the writer kept reading) and writes have failed twice, ``end_trouble()``; returns the status
    after everything is written."""
    status = PersistStatus()
    batches_send, batches_receive = trio.open_memory_channel[Sequence[Tick]](4)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: persist_ticks(batches_receive, storage, status, fast_backoff()))
            await send_all(batches_send, sent)
            await wait_until(lambda: status.ticks_waiting == len(sent) and status.write_failures >= 2)
            assert status.failing_since is not None and status.last_write_error is not None
            assert expected_error in status.last_write_error
            assert status.ticks_persisted == 0 and status.ticks_unwritten == 0
            end_trouble()
            await wait_until(lambda: status.ticks_persisted == len(sent))
            assert status.failing_since is None and status.last_write_error is None and status.ticks_waiting == 0
            await batches_send.aclose()
    await storage.close()
    return status


async def test_a_write_lock_held_beyond_busy_timeout_does_not_stop_ingestion_and_loses_nothing(
    tmp_path: Path,
) -> None:
    path = tmp_path / "db.sqlite3"
    storage = await SQLiteStorage.open(str(path))
    storage._connection.execute("PRAGMA busy_timeout=50")  # the default 5 s, shortened for the test
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")  # another process holding the write lock
    await write_through_trouble(storage, ticks(0, 20_000), lambda: other.execute("ROLLBACK"), "locked")
    other.close()
    assert stored_ids(path) == list(range(20_000))


async def test_what_does_not_fit_in_the_backlog_is_counted_with_its_trade_ids(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "db.sqlite3"
    storage = await SQLiteStorage.open(str(path))
    connection = storage._connection
    pages = connection.execute("PRAGMA page_count").fetchone()[0]
    connection.execute(f"PRAGMA max_page_count={pages + 2}")  # SQLite's own "disk full"
    status = PersistStatus()
    batches_send, batches_receive = trio.open_memory_channel[Sequence[Tick]](4)
    with trio.fail_after(30), caplog.at_level(logging.WARNING, "app.store.persist"):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: persist_ticks(batches_receive, storage, status, fast_backoff(),
                                                     backlog_limit=3000))
            await send_all(batches_send, ticks(0, 4000) + ticks(0, 1000, "ETHUSDT"))
            await wait_until(lambda: status.ticks_unwritten == 2000)
            assert status.ticks_waiting == 3000
            assert status.unwritten_trade_ids == {"BTCUSDT": [[3000, 3999]], "ETHUSDT": [[0, 999]]}
            connection.execute("PRAGMA max_page_count=1073741823")
            await wait_until(lambda: status.ticks_persisted == 3000)
            await batches_send.aclose()
    await storage.close()
    assert stored_ids(path) == list(range(3000))
    logged = caplog.text
    assert "storage_failed what=ticks" in logged and "full" in logged
    assert "storage_backlog_full what=ticks limit=3000" in logged
    assert "storage_recovered" in logged and "BTCUSDT=3000..3999" in logged and "ETHUSDT=0..999" in logged


async def test_ticks_still_waiting_when_the_writer_is_cancelled_are_logged_as_unwritten(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    storage = await SQLiteStorage.open(str(tmp_path / "db.sqlite3"))
    connection = storage._connection
    connection.execute(f"PRAGMA max_page_count={connection.execute('PRAGMA page_count').fetchone()[0]}")
    status = PersistStatus()
    batches_send, batches_receive = trio.open_memory_channel[Sequence[Tick]](4)
    with trio.fail_after(30), caplog.at_level(logging.ERROR, "app.store.persist"):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: persist_ticks(batches_receive, storage, status, fast_backoff()))
            await send_all(batches_send, ticks(0, 1500))
            await batches_send.aclose()  # shutdown: the input ends, the database still fails
            await wait_until(lambda: status.ticks_waiting == 1500 and status.write_failures >= 2)
            nursery.cancel_scope.cancel()  # the drain timeout
    await storage.close()
    assert status.ticks_unwritten == 1500 and status.unwritten_trade_ids == {"BTCUSDT": [[0, 1499]]}
    assert "unwritten_at_shutdown what=ticks count=1500" in caplog.text


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 4 MiB file system (tmpfs): writes past it fail with ENOSPC, as on a full disk."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount_point)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"a real full disk needs a tmpfs mount (root): {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(directory: Path) -> Path:
    """Fills the file system holding ``directory``; returns the filler to delete."""
    filler = directory / "filler"
    with filler.open("wb", buffering=0) as out:
        try:
            while True:
                out.write(b"\0" * 4096)
        except OSError as error:
            assert error.errno == errno.ENOSPC
    return filler


@pytest.fixture
def failing_disk(tmp_path: Path) -> Iterator[tuple[Path, Callable[[], None]]]:
    """A real 16 MiB ext4 file system on a loop device, and a function that makes the kernel declare it broken:
    ext4's ``trigger_fs_error`` with ``errors=remount-ro`` turns it read-only under open files, and every write
    fails with EIO from then on (as a failing disk does; it stays so until fsck)."""
    image, mount_point = tmp_path / "disk.img", tmp_path / "ext4"
    mount_point.mkdir()
    with image.open("wb") as out:
        out.truncate(16 << 20)
    made = subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], capture_output=True, text=True, check=False)
    mounted = made.returncode == 0 and subprocess.run(
        ["mount", "-o", "loop,errors=remount-ro", str(image), str(mount_point)], capture_output=True, check=False
    ).returncode == 0
    if not mounted:
        pytest.skip("a failing disk needs mkfs.ext4 and a loop mount (root)")
    device = subprocess.run(["findmnt", "-n", "-o", "SOURCE", str(mount_point)], capture_output=True, text=True,
                            check=True).stdout.strip()

    def break_disk() -> None:
        Path(f"/sys/fs/ext4/{Path(device).name}/trigger_fs_error").write_text("marketdata test\n")

    try:
        yield mount_point, break_disk
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


async def test_a_disk_turning_read_only_with_io_errors_holds_ticks_and_never_crashes(
    failing_disk: tuple[Path, Callable[[], None]], caplog: pytest.LogCaptureFixture
) -> None:
    mount_point, break_disk = failing_disk
    storage = await SQLiteStorage.open(str(mount_point / "db.sqlite3"))
    status = PersistStatus()
    batches_send, batches_receive = trio.open_memory_channel[Sequence[Tick]](4)
    with trio.fail_after(30), caplog.at_level(logging.WARNING, "app.store.persist"):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: persist_ticks(batches_receive, storage, status, fast_backoff()))
            await send_all(batches_send, ticks(0, 1000))
            await wait_until(lambda: status.ticks_persisted == 1000)
            break_disk()
            await send_all(batches_send, ticks(1000, 5000))
            await wait_until(lambda: status.ticks_waiting == 5000 and status.write_failures >= 3)
            assert status.last_write_error is not None and "disk I/O error" in status.last_write_error
            nursery.cancel_scope.cancel()  # a stop while the disk is still broken
    with trio.CancelScope(shield=True):
        await storage.close()
    assert status.ticks_persisted == 1000 and status.ticks_unwritten == 5000
    assert status.unwritten_trade_ids == {"BTCUSDT": [[1000, 5999]]}
    assert "storage_failed what=ticks" in caplog.text and "unwritten_at_shutdown what=ticks count=5000" in caplog.text


async def test_a_full_disk_holds_ticks_in_memory_until_space_is_freed(tiny_disk: Path) -> None:
    path = tiny_disk / "db.sqlite3"
    storage = await SQLiteStorage.open(str(path))
    await storage.write_ticks(ticks(0, 10))
    filler = fill(tiny_disk)
    await write_through_trouble(storage, ticks(10, 3000), filler.unlink, "full")
    assert stored_ids(path) == list(range(3010))


async def test_postgresql_going_away_holds_ticks_in_memory_until_it_is_back() -> None:
    with fresh_database() as url, admin_connection() as admin:
        storage = await PostgresStorage.open(url)
        await storage.write_ticks(ticks(0, 10))
        database = url.rsplit("/", 1)[1]
        # As a server restart looks from here: the session is killed and new ones are refused.
        admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (database,))

        def back() -> None:
            admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')

        await write_through_trouble(storage, ticks(10, 5000), back, "PostgreSQL")
        reopened = await PostgresStorage.open(url)
        assert await reopened.last_trade_ids() == {"BTCUSDT": 5009}
        assert [tick.trade_id for tick in await reopened.ticks("BTCUSDT", 0, -1, 10_000)] == list(range(5010))
        await reopened.close()


async def test_candles_older_than_memory_answer_503_while_postgresql_is_away() -> None:
    with fresh_database() as url, admin_connection() as admin, trio.fail_after(30):
        storage = await PostgresStorage.open(url)
        database = url.rsplit("/", 1)[1]
        async with running_web(storage=storage) as web, httpx.AsyncClient(base_url=web.base_url) as client:
            await web.publish_and_settle(make_ticks("BTCUSDT", 1, 30, step_ms=10_000))  # 5 minutes of trades
            admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (database,))
            away = await client.get("/api/candles/BTCUSDT", params={"interval": "1m", "limit": 1000})
            assert away.status_code == 503, away.text
            assert away.json()["error"]["code"] == "storage_unavailable"
            assert "PostgreSQL" in away.json()["error"]["message"]
            admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
            back = await client.get("/api/candles/BTCUSDT", params={"interval": "1m", "limit": 1000})
    assert back.status_code == 200, back.text
    assert [candle["trade_count"] for candle in back.json()] == [6, 6, 6, 6, 6]


async def test_both_writers_are_tracked_while_failing_and_the_outage_ends_when_both_write_again(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    storage = await SQLiteStorage.open(str(path))
    storage._connection.execute("PRAGMA busy_timeout=50")
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    status = PersistStatus()
    ticks_send, ticks_receive = trio.open_memory_channel[Sequence[Tick]](4)
    candles_send, candles_receive = trio.open_memory_channel[Sequence[Candle]](4)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: persist_ticks(ticks_receive, storage, status, fast_backoff()))
            nursery.start_soon(lambda: persist_candles(candles_receive, storage, status, fast_backoff()))
            await send_all(ticks_send, ticks(0, 1000))
            await candles_send.send([candle(0)])
            await wait_until(lambda: status.failing_writers == {"ticks", "candles"})
            other.execute("ROLLBACK")
            await wait_until(lambda: status.ticks_persisted == 1000 and status.candles_persisted == 1)
            assert status.failing_since is None and status.failing_writers == set()
            await ticks_send.aclose()
            await candles_send.aclose()
    other.close()
    await storage.close()
