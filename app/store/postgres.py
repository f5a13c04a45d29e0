"""PostgreSQL storage: one psycopg 3 connection, used from worker threads one call at a time.

psycopg's ``AsyncConnection`` runs on asyncio only; its sync connection in ``trio.to_thread`` behind a
``CapacityLimiter(1)`` is the same pattern as the SQLite storage. Prices and volumes are ``numeric`` (exact, and
it keeps the scale: ``61829.76000000`` comes back as written); times are epoch ms in ``bigint``.

Tick batches are copied (``COPY``) into a temporary staging table and inserted from it with ``ON CONFLICT DO
NOTHING`` in the same transaction: one round trip for thousands of rows, and a tick stored twice stays as it
was. Candles go the same way, a stored candle replaced only by the same or a higher revision (every changed
version of a closed candle has a higher revision than those before it, so the same revision is the same
version: a redelivered or reclaimed entry changes nothing, an older one arriving late is ignored).

The schema is versioned in ``schema_version`` and migrated forward by ``open`` under an advisory lock (several
processes may start at once). A lost connection (server restart, network) is reopened on the next call; while
the server is down writes raise ``StorageWriteError`` and the writers retry with backoff.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import psycopg
import trio

from app.clock import wall_clock_ms
from app.model import Candle, Tick
from app.startup import redact_url
from app.store.storage import StorageError, StorageWriteError

log = logging.getLogger(__name__)

T = TypeVar("T")

CONNECT_TIMEOUT_SECONDS = 5
# Any fixed number, the same in every process of the service: serialises migrations.
_MIGRATION_LOCK = 0x6D61726B  # "mark"

MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE ticks (
        symbol text NOT NULL,
        trade_id bigint NOT NULL,
        price numeric NOT NULL,
        quantity numeric NOT NULL,
        trade_time_ms bigint NOT NULL,
        event_time_ms bigint NOT NULL,
        is_buyer_maker boolean NOT NULL,
        PRIMARY KEY (symbol, trade_id)
    );
    -- Ticks arrive in time order, so a BRIN index finds a time range (restore, pruning) at almost no cost per
    -- insert; B-tree indexes on time halved the rows/s of a write (bench/RESULTS.md).
    CREATE INDEX ticks_by_time ON ticks USING brin (trade_time_ms);
    CREATE TABLE candles (
        symbol text NOT NULL,
        interval text NOT NULL,
        open_time_ms bigint NOT NULL,
        close_time_ms bigint NOT NULL,
        open numeric NOT NULL, high numeric NOT NULL, low numeric NOT NULL, close numeric NOT NULL,
        volume numeric NOT NULL, quote_volume numeric NOT NULL, trade_count bigint NOT NULL,
        taker_buy_volume numeric NOT NULL, taker_buy_quote_volume numeric NOT NULL,
        first_trade_id bigint NOT NULL, last_trade_id bigint NOT NULL,
        revision integer NOT NULL,
        PRIMARY KEY (symbol, interval, open_time_ms)
    );
    CREATE TABLE added_symbols (symbol text PRIMARY KEY, added_at_ms bigint NOT NULL);
    """,
    # Candles whose trades from before the service saw the interval could not be fetched (issue 17).
    2: """
    ALTER TABLE candles ADD COLUMN complete boolean NOT NULL DEFAULT true;
    """,
}
SCHEMA_VERSION = max(MIGRATIONS)

_TICK_COLUMNS = "symbol, trade_id, price, quantity, trade_time_ms, event_time_ms, is_buyer_maker"
_CANDLE_COLUMNS = (
    "symbol, interval, open_time_ms, close_time_ms, open, high, low, close, volume, quote_volume, trade_count,"
    " taker_buy_volume, taker_buy_quote_volume, first_trade_id, last_trade_id, revision, complete"
)
_CANDLE_UPDATES = ", ".join(
    f"{column}=excluded.{column}" for column in _CANDLE_COLUMNS.replace(" ", "").split(",")[3:]
)
# Staging tables live as long as the connection; their rows as long as the transaction.
_STAGING = """
CREATE TEMPORARY TABLE IF NOT EXISTS ticks_staging (LIKE ticks) ON COMMIT DELETE ROWS;
CREATE TEMPORARY TABLE IF NOT EXISTS candles_staging (LIKE candles) ON COMMIT DELETE ROWS;
"""
_INSERT_STAGED_TICKS = (
    f"INSERT INTO ticks ({_TICK_COLUMNS}) SELECT {_TICK_COLUMNS} FROM ticks_staging ON CONFLICT DO NOTHING"
)
# DISTINCT ON: one row per candle (an update may not touch a row twice), the highest revision of the batch.
_INSERT_STAGED_CANDLES = (
    f"INSERT INTO candles ({_CANDLE_COLUMNS}) SELECT DISTINCT ON (symbol, interval, open_time_ms) {_CANDLE_COLUMNS}"
    " FROM candles_staging ORDER BY symbol, interval, open_time_ms, revision DESC"
    f" ON CONFLICT (symbol, interval, open_time_ms) DO UPDATE SET {_CANDLE_UPDATES}"
    " WHERE excluded.revision >= candles.revision"
)


def migrate(connection: psycopg.Connection[Any]) -> int:
    """Brings the schema to ``SCHEMA_VERSION``; returns the version found."""
    with connection.transaction():
        connection.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        connection.execute("CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL)")
        row = connection.execute("SELECT max(version) FROM schema_version").fetchone()
        found = int(row[0]) if row is not None and row[0] is not None else 0
        if found > SCHEMA_VERSION:
            raise StorageError(
                f"database schema version {found} is newer than this service's ({SCHEMA_VERSION}); "
                "upgrade the service or point DATABASE_URL at another database"
            )
        for version in range(found + 1, SCHEMA_VERSION + 1):
            connection.execute(MIGRATIONS[version])
            connection.execute("DELETE FROM schema_version")
            connection.execute("INSERT INTO schema_version (version) VALUES (%s)", (version,))
            log.info("schema_migrated version=%d", version)
    return found


def connect(url: str) -> psycopg.Connection[Any]:
    """A migrated connection in autocommit mode (each write makes its own transaction)."""
    try:
        connection = psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_SECONDS)
    except psycopg.Error as error:
        raise StorageError(f"cannot connect to PostgreSQL at {redact_url(url)}: {_one_line(error)}") from None
    try:
        migrate(connection)
        connection.execute(_STAGING)
    except psycopg.Error as error:
        connection.close()
        raise StorageError(f"cannot use PostgreSQL database {redact_url(url)}: {_one_line(error)}") from None
    except BaseException:
        connection.close()
        raise
    return connection


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def _tick_row(tick: Tick) -> tuple[object, ...]:
    return (tick.symbol, tick.trade_id, tick.price, tick.quantity, tick.trade_time_ms, tick.event_time_ms,
            tick.is_buyer_maker)


def _candle_row(candle: Candle) -> tuple[object, ...]:
    return (
        candle.symbol, candle.interval, candle.open_time_ms, candle.close_time_ms,
        candle.open, candle.high, candle.low, candle.close, candle.volume, candle.quote_volume, candle.trade_count,
        candle.taker_buy_volume, candle.taker_buy_quote_volume, candle.first_trade_id, candle.last_trade_id,
        candle.revision, candle.complete,
    )


def _candle_from_row(row: Sequence[Any]) -> Candle:
    (symbol, interval, open_time, close_time, open_, high, low, close, volume, quote_volume, trade_count,
     taker_buy_volume, taker_buy_quote_volume, first_trade_id, last_trade_id, revision, complete) = row
    return Candle(
        symbol=symbol, interval=interval, open_time_ms=open_time, close_time_ms=close_time,
        open=open_, high=high, low=low, close=close, volume=volume, quote_volume=quote_volume,
        trade_count=trade_count, taker_buy_volume=taker_buy_volume, taker_buy_quote_volume=taker_buy_quote_volume,
        first_trade_id=first_trade_id, last_trade_id=last_trade_id, closed=True, revision=revision,
        complete=complete,
    )


class PostgresStorage:
    """``Storage`` on one PostgreSQL connection behind a ``CapacityLimiter(1)``, used from worker threads."""

    def __init__(self, url: str, connection: psycopg.Connection[Any]) -> None:
        self._url = url
        self._connection: psycopg.Connection[Any] | None = connection
        self._limiter = trio.CapacityLimiter(1)
        self.ticks_written = 0
        self.candles_written = 0

    @classmethod
    async def open(cls, url: str) -> PostgresStorage:
        """Connects to ``url`` (``postgresql://USER@HOST:PORT/DB``) and migrates its schema."""
        return cls(url, await trio.to_thread.run_sync(connect, url))

    def _live_connection(self) -> psycopg.Connection[Any]:
        connection = self._connection
        if connection is None or connection.closed or connection.broken:
            if connection is not None:
                connection.close()
            self._connection = None
            connection = self._connection = connect(self._url)
            log.warning("postgres_reconnected url=%s", redact_url(self._url))
        return connection

    def _call(self, work: Callable[[psycopg.Connection[Any]], T]) -> T:
        """``work`` in one transaction; a server that cannot be reached or refuses the write raises
        ``StorageWriteError`` (retried by the writers), as SQLite's locked or full database does."""
        try:
            connection = self._live_connection()
            with connection.transaction():
                return work(connection)
        except StorageError as error:  # reconnecting failed
            raise StorageWriteError(str(error)) from error
        except psycopg.OperationalError as error:
            raise StorageWriteError(f"PostgreSQL write failed: {_one_line(error)}") from error
        except psycopg.Error as error:
            # Refused for good (a permission, a table changed by hand): not worth a retry.
            raise StorageError(f"PostgreSQL query failed: {_one_line(error)}") from error

    async def _run(self, work: Callable[[psycopg.Connection[Any]], T]) -> T:
        return await trio.to_thread.run_sync(self._call, work, limiter=self._limiter)

    async def _copy_in(self, staging: str, columns: str, rows: list[tuple[object, ...]], insert: str) -> None:
        """``rows`` COPYed into the ``staging`` table, then ``insert`` from it, in one transaction."""

        def work(connection: psycopg.Connection[Any]) -> None:
            with connection.cursor() as cursor:
                with cursor.copy(f"COPY {staging} ({columns}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
                cursor.execute(insert)

        await self._run(work)

    async def write_ticks(self, ticks: Sequence[Tick]) -> None:
        if ticks:
            await self._copy_in("ticks_staging", _TICK_COLUMNS, [_tick_row(tick) for tick in ticks],
                                _INSERT_STAGED_TICKS)
            self.ticks_written += len(ticks)

    async def write_candles(self, candles: Sequence[Candle]) -> None:
        if candles:
            await self._copy_in("candles_staging", _CANDLE_COLUMNS, [_candle_row(candle) for candle in candles],
                                _INSERT_STAGED_CANDLES)
            self.candles_written += len(candles)

    async def added_symbols(self) -> list[str]:
        rows = await self._run(lambda connection: connection.execute(
            "SELECT symbol FROM added_symbols ORDER BY added_at_ms, symbol").fetchall())
        return [str(row[0]) for row in rows]

    async def set_symbol_added(self, symbol: str, added: bool) -> None:
        if added:
            now_ms = wall_clock_ms()
            await self._run(lambda connection: connection.execute(
                "INSERT INTO added_symbols (symbol, added_at_ms) VALUES (%s, %s)"
                " ON CONFLICT (symbol) DO UPDATE SET added_at_ms = excluded.added_at_ms", (symbol, now_ms)))
        else:
            await self._run(lambda connection: connection.execute(
                "DELETE FROM added_symbols WHERE symbol = %s", (symbol,)))

    async def last_trade_ids(self) -> dict[str, int]:
        # A loose index scan: one index seek per symbol instead of a scan of every tick.
        rows = await self._run(lambda connection: connection.execute(
            "WITH RECURSIVE s(symbol) AS (SELECT min(symbol) FROM ticks UNION ALL"
            " SELECT (SELECT min(symbol) FROM ticks WHERE symbol > s.symbol) FROM s WHERE s.symbol IS NOT NULL)"
            " SELECT symbol, (SELECT max(trade_id) FROM ticks WHERE ticks.symbol = s.symbol) FROM s"
            " WHERE symbol IS NOT NULL").fetchall())
        return {str(symbol): int(trade_id) for symbol, trade_id in rows}

    async def candles(
        self, symbol: str, interval: str, start_ms: int | None, end_ms: int | None, limit: int
    ) -> list[Candle]:
        low = start_ms if start_ms is not None else -(2**62)
        high = end_ms if end_ms is not None else 2**62
        order = "ASC" if start_ms is not None else "DESC"

        def query(connection: psycopg.Connection[Any]) -> list[Candle]:
            rows = connection.execute(
                f"SELECT {_CANDLE_COLUMNS} FROM candles WHERE symbol=%s AND interval=%s"
                f" AND open_time_ms BETWEEN %s AND %s ORDER BY open_time_ms {order} LIMIT %s",
                (symbol, interval, low, high, max(0, limit)),
            ).fetchall()
            candles = [_candle_from_row(row) for row in rows]
            return candles if order == "ASC" else candles[::-1]

        return await self._run(query)

    async def ticks(self, symbol: str, start_ms: int, after_trade_id: int, limit: int) -> list[Tick]:
        def query(connection: psycopg.Connection[Any]) -> list[Tick]:
            rows = connection.execute(
                f"SELECT {_TICK_COLUMNS} FROM ticks WHERE symbol=%s AND trade_id>%s AND trade_time_ms>=%s"
                # The first id from the time on (through the time index): the key scan then starts there.
                " AND trade_id >= (SELECT min(trade_id) FROM ticks WHERE symbol=%s AND trade_time_ms>=%s)"
                " ORDER BY trade_id LIMIT %s",
                (symbol, after_trade_id, start_ms, symbol, start_ms, limit),
            ).fetchall()
            return [Tick(symbol, price, quantity, trade_time, event_time, trade_id, maker)
                    for symbol, trade_id, price, quantity, trade_time, event_time, maker in rows]

        return await self._run(query)

    async def delete_ticks_before(self, cutoff_ms: int, limit: int) -> int:
        def delete(connection: psycopg.Connection[Any]) -> int:
            cursor = connection.execute(
                "DELETE FROM ticks WHERE ctid IN (SELECT ctid FROM ticks WHERE trade_time_ms < %s LIMIT %s)",
                (cutoff_ms, limit),
            )
            return cursor.rowcount

        return await self._run(delete)

    async def close(self) -> None:
        connection = self._connection
        self._connection = None
        if connection is not None:
            await trio.to_thread.run_sync(connection.close, limiter=self._limiter)
