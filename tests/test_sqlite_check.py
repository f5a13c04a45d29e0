"""A damaged SQLite file or WAL at start-up: refused in one line naming the file, the files left byte for byte."""

from __future__ import annotations

import functools
import hashlib
import logging
import shutil
import sqlite3
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from app.store.sqlite import connect
from app.store.sqlite_check import check_database_file, check_wal
from app.store.storage import StorageError

TRANSACTIONS = 5
TICKS_PER_TRANSACTION = 1000
PAGE = 4096


def write_ticks(connection: sqlite3.Connection, transaction: int) -> None:
    first = transaction * TICKS_PER_TRANSACTION
    connection.execute("BEGIN")
    connection.executemany("INSERT INTO ticks VALUES (?, ?, '61829.76', '0.0012', ?, ?, 0)",
                           [("BTCUSDT", trade_id, trade_id, trade_id)
                            for trade_id in range(first, first + TICKS_PER_TRANSACTION)])
    connection.execute("COMMIT")


@pytest.fixture
def crashed(tmp_path: Path) -> Iterator[Path]:
    """A database as a ``kill -9`` leaves it: committed transactions still in the WAL, not checkpointed."""
    live = tmp_path / "live"
    live.mkdir()
    connection = connect(str(live / "md.sqlite3"))
    connection.execute("PRAGMA wal_autocheckpoint=0")
    for transaction in range(TRANSACTIONS):
        write_ticks(connection, transaction)
    copy = tmp_path / "crashed"
    copy.mkdir()
    for name in ("md.sqlite3", "md.sqlite3-wal"):
        shutil.copyfile(live / name, copy / name)  # the files on disk at the moment of the crash
    yield copy / "md.sqlite3"
    connection.close()


@pytest.fixture
def checkpointed(tmp_path: Path) -> Path:
    """A cleanly closed database (no WAL) with ticks in many pages."""
    path = tmp_path / "clean.sqlite3"
    connection = connect(str(path))
    for transaction in range(TRANSACTIONS):
        write_ticks(connection, transaction)
    connection.close()
    assert not Path(f"{path}-wal").exists()
    return path


def digests(*paths: Path) -> dict[str, str]:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in paths}


def damage(path: Path, offset: int, length: int = 190) -> None:
    data = bytearray(path.read_bytes())
    data[offset:offset + length] = bytes(byte ^ 0xFF for byte in data[offset:offset + length])
    path.write_bytes(bytes(data))


def test_a_crashed_database_with_an_intact_wal_opens_with_every_committed_transaction(crashed: Path) -> None:
    connection = connect(str(crashed))
    assert connection.execute("SELECT COUNT(*) FROM ticks").fetchone()[0] == TRANSACTIONS * TICKS_PER_TRANSACTION
    connection.close()


def test_a_torn_last_wal_frame_is_what_a_crash_leaves_and_is_not_damage(crashed: Path) -> None:
    wal = Path(f"{crashed}-wal")
    wal.write_bytes(wal.read_bytes()[:-1000])  # the last frame half-written
    assert check_wal(wal.read_bytes()) is None
    connection = connect(str(crashed))
    # Only the last transaction, whose commit frame was torn, is gone (as SQLite promises).
    assert connection.execute("SELECT COUNT(*) FROM ticks").fetchone()[0] == (TRANSACTIONS - 1) * TICKS_PER_TRANSACTION
    connection.close()


def test_a_damaged_wal_frame_is_refused_and_neither_file_is_changed(crashed: Path) -> None:
    wal = Path(f"{crashed}-wal")
    damage(wal, 32 + 24 + 100)  # inside the page of the first frame
    before = digests(crashed, wal)
    with pytest.raises(StorageError) as refused:
        connect(str(crashed))
    message = str(refused.value)
    assert str(wal) in message and "WAL frame 1 " in message and "fails its checksum" in message
    assert "\n" not in message
    assert digests(crashed, wal) == before


@functools.cache
def small_wal() -> bytes:
    """A real WAL of a few committed transactions (about 20 frames), made once."""
    with tempfile.TemporaryDirectory() as directory:
        connection = connect(f"{directory}/small.sqlite3")
        connection.execute("PRAGMA wal_autocheckpoint=0")
        for transaction in range(4):
            connection.execute("BEGIN")
            connection.executemany("INSERT INTO ticks VALUES (?, ?, '1.5', '2', ?, ?, 0)",
                                   [("BTCUSDT", trade_id, trade_id, trade_id)
                                    for trade_id in range(transaction * 100, transaction * 100 + 100)])
            connection.execute("COMMIT")
        wal = Path(f"{directory}/small.sqlite3-wal").read_bytes()
        connection.close()
    return wal


def frame_size(wal: bytes) -> int:
    return 24 + int.from_bytes(wal[8:12], "big")


@given(length=st.integers(min_value=0, max_value=200_000))
def test_a_wal_cut_anywhere_is_what_a_crash_leaves_and_not_damage(length: int) -> None:
    assert check_wal(small_wal()[:length]) is None


@given(data=st.data())
def test_any_changed_byte_before_the_last_frame_is_reported(data: st.DataObject) -> None:
    wal = bytearray(small_wal())
    last_frame = len(wal) - frame_size(bytes(wal))
    offset = data.draw(st.integers(min_value=0, max_value=last_frame - 1), label="offset")
    wal[offset] ^= data.draw(st.integers(min_value=1, max_value=255), label="xor")
    assert check_wal(bytes(wal)) is not None


def test_the_wal_header_is_checked_too(crashed: Path) -> None:
    wal = bytearray(Path(f"{crashed}-wal").read_bytes())
    wal[12] ^= 0x01  # the checkpoint sequence number
    assert check_wal(bytes(wal)) == "the WAL header fails its checksum"
    wal[0] ^= 0x01
    assert check_wal(bytes(wal)) == "the WAL header has no WAL magic number"


@pytest.mark.parametrize("page", [2, 3, 10, 30])
def test_a_damaged_page_is_refused_naming_the_file_and_the_file_is_not_changed(checkpointed: Path, page: int) -> None:
    damage(checkpointed, (page - 1) * PAGE + 10)
    before = digests(checkpointed)
    with pytest.raises(StorageError) as refused:
        connect(str(checkpointed))
    message = str(refused.value)
    assert str(checkpointed) in message and "is damaged" in message and "\n" not in message
    assert digests(checkpointed) == before


def test_a_large_file_gets_every_table_but_the_ticks_checked(
    checkpointed: Path, caplog: pytest.LogCaptureFixture
) -> None:
    size = checkpointed.stat().st_size
    damage(checkpointed, 29 * PAGE + 10)  # a page of the ticks table
    with caplog.at_level(logging.INFO, "app.store.sqlite_check"):
        check_database_file(str(checkpointed), full_check_max_bytes=size - 1)
    assert "start_up_check_partial" in caplog.text and "the ticks table is not page-checked" in caplog.text
    with pytest.raises(StorageError, match="is damaged"):
        check_database_file(str(checkpointed), full_check_max_bytes=size)
    damage(checkpointed, 3 * PAGE, 8)  # the header of the candles table's root page
    with pytest.raises(StorageError, match="is damaged"):
        check_database_file(str(checkpointed), full_check_max_bytes=size - 1)


async def test_serve_on_a_damaged_database_exits_2_with_one_line_and_leaves_the_file(checkpointed: Path) -> None:
    damage(checkpointed, 9 * PAGE + 10)
    before = digests(checkpointed)
    with trio.fail_after(60):
        result = await trio.run_process(
            [sys.executable, "-m", "app", "serve", "--port", "0", "--ws-url", "ws://127.0.0.1:9/ws",
             "--rest-url", "http://127.0.0.1:9", "--database-url", f"sqlite:///{checkpointed}"],
            capture_stderr=True, check=False, cwd=checkpointed.parent,
        )
    output = result.stderr.decode()
    assert result.returncode == 2, output
    assert output.count("\n") == 1 and output.startswith("marketdata: cannot use DATABASE_URL="), output
    assert str(checkpointed) in output and "is damaged" in output
    assert digests(checkpointed) == before
