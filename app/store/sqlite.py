"""SQLite storage: one connection, used from worker threads one call at a time, WAL mode.

Decimals are stored as their exact text; times as integer epoch ms. The schema is versioned with
``PRAGMA user_version`` and migrated forward by ``open`` (each migration in its own transaction); a database
written by a newer version of the service is refused rather than misread.

Durability: WAL with ``synchronous=NORMAL`` keeps every committed transaction across a process crash
(``kill -9``); an operating-system crash or power loss may lose the last transactions (``FULL`` would not, at a
cost per commit).
"""

from __future__ import annotations

import functools
import logging
import sqlite3
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import TypeVar

import trio

from app.clock import wall_clock_ms
from app.model import Candle, Tick
from app.store.sqlite_check import check_database_file
from app.store.storage import StorageError, StorageWriteError

log = logging.getLogger(__name__)

T = TypeVar("T")

# Rows per executemany call; one transaction per write call.
_CHUNK = 10_000

MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE ticks (
        symbol TEXT NOT NULL,
        trade_id INTEGER NOT NULL,
        price TEXT NOT NULL,
        quantity TEXT NOT NULL,
        trade_time_ms INTEGER NOT NULL,
        event_time_ms INTEGER NOT NULL,
        is_buyer_maker INTEGER NOT NULL,
        PRIMARY KEY (symbol, trade_id)
    ) WITHOUT ROWID;
    CREATE INDEX ticks_by_time ON ticks (trade_time_ms);
    CREATE TABLE candles (
        symbol TEXT NOT NULL,
        interval TEXT NOT NULL,
        open_time_ms INTEGER NOT NULL,
        close_time_ms INTEGER NOT NULL,
        open TEXT NOT NULL, high TEXT NOT NULL, low TEXT NOT NULL, close TEXT NOT NULL,
        volume TEXT NOT NULL, quote_volume TEXT NOT NULL, trade_count INTEGER NOT NULL,
        taker_buy_volume TEXT NOT NULL, taker_buy_quote_volume TEXT NOT NULL,
        first_trade_id INTEGER NOT NULL, last_trade_id INTEGER NOT NULL,
        revision INTEGER NOT NULL,
        PRIMARY KEY (symbol, interval, open_time_ms)
    ) WITHOUT ROWID;
    """,
    # Restart replays one symbol's ticks from a time on.
    2: """
    CREATE INDEX ticks_by_symbol_time ON ticks (symbol, trade_time_ms);
    """,
    # Symbols added at run time are subscribed again after a restart.
    3: """
    CREATE TABLE added_symbols (symbol TEXT PRIMARY KEY, added_at_ms INTEGER NOT NULL) WITHOUT ROWID;
    """,
    # Candles whose trades from before the service saw the interval could not be fetched (issue 17).
    4: """
    ALTER TABLE candles ADD COLUMN complete INTEGER NOT NULL DEFAULT 1;
    """,
}
SCHEMA_VERSION = max(MIGRATIONS)

_TICK_COLUMNS = "symbol, trade_id, price, quantity, trade_time_ms, event_time_ms, is_buyer_maker"
# Ticks per INSERT statement (7 parameters each; SQLite allows 32,766 per statement since 3.32). sqlite3 lets
# go of the GIL for every statement step and must take it back after: with executemany that is once per row,
# and while the event loop keeps the GIL busy each take-back can wait the interpreter's switch interval (5 ms),
# so a write of a few hundred ticks took seconds under load and stalled the fan-out. One multi-row statement
# takes the GIL back once per 1,024 ticks. Shorter statements come in power-of-two sizes only: sqlite3 keeps its
# last 128 distinct statements prepared, and one per remainder size (1 to 1,023) grew SQLite's heap by ~50 MB
# (~0.3 MB per large statement, measured) over a long run; powers of two keep at most 11 of them.
_TICKS_PER_STATEMENT = 1024


@functools.cache
def _insert_ticks_sql(count: int) -> str:
    return f"INSERT OR IGNORE INTO ticks ({_TICK_COLUMNS}) VALUES " + ",".join(["(?,?,?,?,?,?,?)"] * count)


_INSERT_TICKS = _insert_ticks_sql(_TICKS_PER_STATEMENT)
_CANDLE_COLUMNS = (
    "symbol, interval, open_time_ms, close_time_ms, open, high, low, close, volume, quote_volume, trade_count,"
    " taker_buy_volume, taker_buy_quote_volume, first_trade_id, last_trade_id, revision, complete"
)
_INSERT_CANDLE = (
    f"INSERT INTO candles ({_CANDLE_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
    " ON CONFLICT (symbol, interval, open_time_ms) DO UPDATE SET"
    " close_time_ms=excluded.close_time_ms, open=excluded.open, high=excluded.high, low=excluded.low,"
    " close=excluded.close, volume=excluded.volume, quote_volume=excluded.quote_volume,"
    " trade_count=excluded.trade_count, taker_buy_volume=excluded.taker_buy_volume,"
    " taker_buy_quote_volume=excluded.taker_buy_quote_volume, first_trade_id=excluded.first_trade_id,"
    " last_trade_id=excluded.last_trade_id, revision=excluded.revision,"
    " complete=excluded.complete WHERE excluded.revision >= candles.revision"
)


def migrate(connection: sqlite3.Connection) -> int:
    """Brings the schema to ``SCHEMA_VERSION``; returns the version found."""
    found = int(connection.execute("PRAGMA user_version").fetchone()[0])
    if found > SCHEMA_VERSION:
        raise StorageError(
            f"database schema version {found} is newer than this service's ({SCHEMA_VERSION}); "
            "upgrade the service or point DATABASE_URL at another file"
        )
    for version in range(found + 1, SCHEMA_VERSION + 1):
        connection.executescript(f"BEGIN; {MIGRATIONS[version]} PRAGMA user_version={version}; COMMIT;")
        log.info("schema_migrated version=%d", version)
    return found


def connect(path: str) -> sqlite3.Connection:
    # Read-only first: opening for writing would replay a damaged WAL into the file and lose what follows.
    check_database_file(path)
    try:
        connection = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        connection.execute("PRAGMA busy_timeout=5000")
        migrate(connection)
    except sqlite3.DatabaseError as error:
        raise StorageError(f"cannot open SQLite database {path!r}: {error}") from error
    return connection


def _rollback(connection: sqlite3.Connection) -> None:
    if not connection.in_transaction:
        return
    try:
        connection.execute("ROLLBACK")
    except sqlite3.OperationalError as error:
        # SQLite rolls back by itself after some errors (SQLITE_FULL, SQLITE_IOERR); the original error is the news.
        log.debug("rollback_failed error=%s", error)


def _tick_row(tick: Tick) -> tuple[object, ...]:
    return (tick.symbol, tick.trade_id, str(tick.price), str(tick.quantity), tick.trade_time_ms,
            tick.event_time_ms, int(tick.is_buyer_maker))


def _tick_from_row(row: Sequence[object]) -> Tick:
    symbol, trade_id, price, quantity, trade_time, event_time, maker = row
    return Tick(str(symbol), Decimal(str(price)), Decimal(str(quantity)), _int(trade_time), _int(event_time),
                _int(trade_id), bool(maker))


def _candle_row(candle: Candle) -> tuple[object, ...]:
    return (
        candle.symbol, candle.interval, candle.open_time_ms, candle.close_time_ms,
        str(candle.open), str(candle.high), str(candle.low), str(candle.close),
        str(candle.volume), str(candle.quote_volume), candle.trade_count,
        str(candle.taker_buy_volume), str(candle.taker_buy_quote_volume),
        candle.first_trade_id, candle.last_trade_id, candle.revision, int(candle.complete),
    )


def _candle_from_row(row: Sequence[object]) -> Candle:
    (symbol, interval, open_time, close_time, open_, high, low, close, volume, quote_volume, trade_count,
     taker_buy_volume, taker_buy_quote_volume, first_trade_id, last_trade_id, revision, complete) = row
    return Candle(
        symbol=str(symbol), interval=str(interval), open_time_ms=_int(open_time), close_time_ms=_int(close_time),
        open=Decimal(str(open_)), high=Decimal(str(high)), low=Decimal(str(low)), close=Decimal(str(close)),
        volume=Decimal(str(volume)), quote_volume=Decimal(str(quote_volume)), trade_count=_int(trade_count),
        taker_buy_volume=Decimal(str(taker_buy_volume)),
        taker_buy_quote_volume=Decimal(str(taker_buy_quote_volume)),
        first_trade_id=_int(first_trade_id), last_trade_id=_int(last_trade_id),
        closed=True, revision=_int(revision), complete=bool(complete),
    )


def _int(value: object) -> int:
    assert isinstance(value, int)
    return value


class SQLiteStorage:
    """``Storage`` on one SQLite connection behind a ``CapacityLimiter(1)``, used from worker threads."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection
        self._limiter = trio.CapacityLimiter(1)
        self.ticks_written = 0
        self.candles_written = 0
        self.write_seconds = 0.0

    @classmethod
    async def open(cls, path: str) -> SQLiteStorage:
        """Opens (creating and migrating as needed) the database at ``path`` (``":memory:"`` for none)."""
        return cls(await trio.to_thread.run_sync(connect, path))

    async def _run(self, function: Callable[..., T], *args: object) -> T:
        try:
            return await trio.to_thread.run_sync(function, *args, limiter=self._limiter)
        except sqlite3.Error as error:
            # A query failing on a file that opened fine (a damaged page the start-up check did not read, a
            # table changed by hand): the storage's error, so that callers need not know SQLite.
            raise StorageError(f"SQLite query failed: {error}") from error

    def _write(self, sql: str, rows: list[tuple[object, ...]]) -> None:
        def insert(connection: sqlite3.Connection) -> None:
            for start in range(0, len(rows), _CHUNK):
                connection.executemany(sql, rows[start:start + _CHUNK])

        self._transaction(insert)

    def _write_ticks(self, rows: list[tuple[object, ...]]) -> None:
        def insert(connection: sqlite3.Connection) -> None:
            start = 0
            while start < len(rows):
                count = min(_TICKS_PER_STATEMENT, 1 << ((len(rows) - start).bit_length() - 1))
                part = rows[start:start + count]
                sql = _INSERT_TICKS if count == _TICKS_PER_STATEMENT else _insert_ticks_sql(count)
                connection.execute(sql, [value for row in part for value in row])
                start += count

        self._transaction(insert)

    def _transaction(self, work: Callable[[sqlite3.Connection], T]) -> T:
        connection = self._connection
        try:
            connection.execute("BEGIN")
            result = work(connection)
            connection.execute("COMMIT")
        except BaseException as error:
            _rollback(connection)
            if isinstance(error, sqlite3.OperationalError):
                # Locked beyond busy_timeout, disk full or read-only, I/O error: may succeed later.
                raise StorageWriteError(f"SQLite write failed: {error}") from error
            raise
        return result

    async def write_ticks(self, ticks: Sequence[Tick]) -> None:
        if not ticks:
            return
        rows = [_tick_row(tick) for tick in ticks]
        started = trio.current_time()
        await self._run(self._write_ticks, rows)
        self.write_seconds += trio.current_time() - started
        self.ticks_written += len(rows)

    async def write_candles(self, candles: Sequence[Candle]) -> None:
        if not candles:
            return
        rows = [_candle_row(candle) for candle in candles]
        await self._run(self._write, _INSERT_CANDLE, rows)
        self.candles_written += len(rows)

    async def added_symbols(self) -> list[str]:
        rows = await self._run(lambda: self._connection.execute(
            "SELECT symbol FROM added_symbols ORDER BY added_at_ms, symbol").fetchall())
        return [str(row[0]) for row in rows]

    async def set_symbol_added(self, symbol: str, added: bool) -> None:
        if added:
            await self._run(self._write, "INSERT OR REPLACE INTO added_symbols (symbol, added_at_ms) VALUES (?, ?)",
                            [(symbol, wall_clock_ms())])
        else:
            await self._run(self._write, "DELETE FROM added_symbols WHERE symbol = ?", [(symbol,)])

    async def last_trade_ids(self) -> dict[str, int]:
        def query() -> list[tuple[str, int]]:
            # One index seek per symbol instead of a scan of every tick.
            symbols = [row[0] for row in self._connection.execute(
                "WITH RECURSIVE s(symbol) AS (SELECT MIN(symbol) FROM ticks UNION ALL"
                " SELECT (SELECT MIN(symbol) FROM ticks WHERE symbol > s.symbol) FROM s WHERE s.symbol IS NOT NULL)"
                " SELECT symbol FROM s WHERE symbol IS NOT NULL")]
            return [(symbol, self._connection.execute(
                "SELECT MAX(trade_id) FROM ticks WHERE symbol=?", (symbol,)).fetchone()[0]) for symbol in symbols]

        rows = await self._run(query)
        return {str(symbol): int(trade_id) for symbol, trade_id in rows}

    async def candles(
        self, symbol: str, interval: str, start_ms: int | None, end_ms: int | None, limit: int
    ) -> list[Candle]:
        low = start_ms if start_ms is not None else -(2**62)
        high = end_ms if end_ms is not None else 2**62
        order = "ASC" if start_ms is not None else "DESC"

        def query() -> list[Candle]:
            rows = self._connection.execute(
                f"SELECT {_CANDLE_COLUMNS} FROM candles WHERE symbol=? AND interval=? AND open_time_ms BETWEEN ? AND ?"
                f" ORDER BY open_time_ms {order} LIMIT ?",
                (symbol, interval, low, high, max(0, limit)),
            ).fetchall()
            candles = [_candle_from_row(row) for row in rows]
            return candles if order == "ASC" else candles[::-1]

        return await self._run(query)

    async def ticks(self, symbol: str, start_ms: int, after_trade_id: int, limit: int) -> list[Tick]:
        def query() -> list[Tick]:
            connection = self._connection
            first = connection.execute(
                "SELECT MIN(trade_id) FROM ticks WHERE symbol=? AND trade_time_ms>=?", (symbol, start_ms)
            ).fetchone()[0]
            if first is None:
                return []
            rows = connection.execute(
                f"SELECT {_TICK_COLUMNS} FROM ticks WHERE symbol=? AND trade_id>=? AND trade_id>?"
                " AND trade_time_ms>=? ORDER BY trade_id LIMIT ?",
                (symbol, first, after_trade_id, start_ms, limit),
            ).fetchall()
            return [_tick_from_row(row) for row in rows]

        return await self._run(query)

    async def delete_ticks_before(self, cutoff_ms: int, limit: int) -> int:
        def delete(connection: sqlite3.Connection) -> int:
            return int(connection.execute(
                "DELETE FROM ticks WHERE (symbol, trade_id) IN"
                " (SELECT symbol, trade_id FROM ticks WHERE trade_time_ms < ? LIMIT ?)",
                (cutoff_ms, limit),
            ).rowcount)

        return await self._run(self._transaction, delete)

    async def close(self) -> None:
        await self._run(self._connection.close)
