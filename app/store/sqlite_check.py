"""Start-up check of an SQLite database file and its write-ahead log, without changing either.

Opening a database read-write replays its WAL and checkpoints it into the file; a damaged WAL frame makes
SQLite stop the replay there and silently drop the committed transactions after it. So before the service
opens a file for writing, this module reads both read-only: the WAL frame by frame (its checksums,
``check_wal``), then the pages of the database with ``PRAGMA quick_check`` (all of them up to
``FULL_CHECK_MAX_BYTES``, beyond it all but the ticks table's). Any damage raises
``StorageError`` naming the file and the problem, with the files left byte for byte as they were.
"""

from __future__ import annotations

import logging
import sqlite3
import struct
from pathlib import Path
from urllib.parse import quote

from app.store.storage import StorageError

log = logging.getLogger(__name__)

_WAL_MAGIC_LITTLE_ENDIAN = 0x377F0682
_WAL_MAGIC_BIG_ENDIAN = 0x377F0683
_WAL_HEADER = 32
_FRAME_HEADER = 24
# Rows of quick_check shown in the error line.
_PROBLEMS_SHOWN = 3
# Files up to this size get every page checked at start-up; larger ones all tables but the ticks.
FULL_CHECK_MAX_BYTES = 1 << 30
_SMALL_TABLES = ("sqlite_schema", "candles", "added_symbols")


def _checksum(data: bytes, big_endian: bool, seed: tuple[int, int]) -> tuple[int, int]:
    """SQLite's WAL checksum (fileformat2.html, "Checksum Algorithm"), continued from ``seed``."""
    words = struct.unpack(f"{'>' if big_endian else '<'}{len(data) // 4}I", data)
    s0, s1 = seed
    for index in range(0, len(words), 2):
        s0 = (s0 + words[index] + s1) & 0xFFFFFFFF
        s1 = (s1 + words[index + 1] + s0) & 0xFFFFFFFF
    return s0, s1


def check_wal(wal: bytes) -> str | None:
    """The damage in a WAL file's contents, or None when SQLite will replay all of it.

    SQLite replays frames while each passes its checksum (chained from the previous frame) and carries the
    header's salts, and stops at the first that does not. That is normal at the end: a torn last frame (a
    crash during a write) or frames left from an earlier generation. It is damage when a later frame of the
    same generation is intact (checked from the failing frame's stored checksum, or from the checksum it should
    have): SQLite would silently drop the committed transactions after the damage.
    """
    if len(wal) < _WAL_HEADER:
        return None  # no header yet: no frame was ever readable, nothing to lose
    magic, _version, page_size, _sequence, salt1, salt2, check1, check2 = struct.unpack(">8I", wal[:_WAL_HEADER])
    if magic not in (_WAL_MAGIC_LITTLE_ENDIAN, _WAL_MAGIC_BIG_ENDIAN):
        return "the WAL header has no WAL magic number"
    big_endian = magic == _WAL_MAGIC_BIG_ENDIAN
    running = _checksum(wal[:24], big_endian, (0, 0))
    if running != (check1, check2):
        return "the WAL header fails its checksum"
    frame_size = _FRAME_HEADER + page_size
    frames = (len(wal) - _WAL_HEADER) // frame_size

    def frame(index: int) -> tuple[bytes, tuple[int, int], tuple[int, int]]:
        """The bytes a frame's checksum covers, its salts, its stored checksum."""
        start = _WAL_HEADER + index * frame_size
        header = wal[start:start + _FRAME_HEADER]
        _page, _size, frame_salt1, frame_salt2, stored1, stored2 = struct.unpack(">6I", header)
        return header[:8] + wal[start + _FRAME_HEADER:start + frame_size], (frame_salt1, frame_salt2), (
            stored1, stored2)

    def verifies(index: int, seed: tuple[int, int]) -> bool:
        covered, salts, stored = frame(index)
        return salts == (salt1, salt2) and _checksum(covered, big_endian, seed) == stored

    for index in range(frames):
        covered, _salts, stored = frame(index)
        if verifies(index, running):
            running = stored
            continue
        should_be = _checksum(covered, big_endian, running)
        if index + 1 < frames and (verifies(index + 1, stored) or verifies(index + 1, should_be)):
            offset = _WAL_HEADER + index * frame_size
            return (f"WAL frame {index + 1} (byte offset {offset}) fails its checksum while later frames are intact: "
                    "the transactions after it would be lost")
        return None
    return None


def _read_only_uri(path: Path) -> str:
    # immutable=0 (the default): a read-only connection still reads the WAL, but never writes or checkpoints.
    return f"file:{quote(str(path.resolve()))}?mode=ro"


def check_database_file(path: str, full_check_max_bytes: int = FULL_CHECK_MAX_BYTES) -> None:
    """Raises ``StorageError`` if the database at ``path`` (or its WAL) is damaged; a missing file is fine."""
    database = Path(path)
    if path == ":memory:" or not database.is_file() or database.stat().st_size == 0:
        return
    wal = Path(f"{path}-wal")
    if wal.is_file():
        damage = check_wal(wal.read_bytes())
        if damage is not None:
            raise StorageError(
                f"cannot open SQLite database {path!r}: its write-ahead log {str(wal)!r} is damaged: {damage}; "
                f"nothing was changed: restore both files from a backup, or move {str(wal)!r} aside to open the "
                "database as of its last checkpoint"
            )
    # Every page when the file is small enough to read in seconds; beyond that every table but the ticks, which
    # would hold start-up for minutes (MB/s of quick_check in bench/RESULTS.md).
    size = database.stat().st_size
    checks = ["PRAGMA quick_check"] if size <= full_check_max_bytes else [
        f"PRAGMA quick_check({table})" for table in _SMALL_TABLES]
    if len(checks) > 1:
        log.info("start_up_check_partial path=%s size_mb=%.0f: the ticks table is not page-checked (check it by "
                 "hand: sqlite3 %s 'PRAGMA quick_check')", path, size / 1e6, path)
    try:
        connection = sqlite3.connect(_read_only_uri(database), uri=True)
        try:
            # One row may hold several problems, one per line, after a "*** in database main ***" heading.
            rows = [line for check in checks for row in connection.execute(check)
                    for line in str(row[0]).splitlines() if line.strip() and not line.startswith("***")]
            rows = [row for row in rows if row != "ok"] or ["ok"]
        finally:
            connection.close()
    except sqlite3.DatabaseError as error:
        rows = [str(error)]
    if rows != ["ok"]:
        rows = rows or ["quick_check found problems"]
        shown = "; ".join(rows[:_PROBLEMS_SHOWN]) + (f" (and {len(rows) - _PROBLEMS_SHOWN} more)"
                                                     if len(rows) > _PROBLEMS_SHOWN else "")
        raise StorageError(
            f"cannot open SQLite database {path!r}: it is damaged: {shown}; nothing was changed: restore it from a "
            f"backup, or salvage it with `sqlite3 {path} .recover`"
        )
