"""SQLite storage: one connection, used from worker threads one call at a time, WAL mode."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import TypeVar

import trio

from app.model import Candle, Tick

T = TypeVar("T")

SCHEMA_VERSION = 1

_MIGRATIONS: dict[int, str] = {
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
}


def _connect(path: str) -> sqlite3.Connection:
    connection = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    version = connection.execute("PRAGMA user_version").fetchone()[0]
    for target in range(version + 1, SCHEMA_VERSION + 1):
        connection.executescript(f"BEGIN; {_MIGRATIONS[target]} PRAGMA user_version={target}; COMMIT;")
    return connection


def _candle_row(candle: Candle) -> tuple[object, ...]:
    return (
        candle.symbol, candle.interval, candle.open_time_ms, candle.close_time_ms,
        str(candle.open), str(candle.high), str(candle.low), str(candle.close),
        str(candle.volume), str(candle.quote_volume), candle.trade_count,
        str(candle.taker_buy_volume), str(candle.taker_buy_quote_volume),
        candle.first_trade_id, candle.last_trade_id, candle.revision,
    )


def _candle_from_row(row: Sequence[object]) -> Candle:
    (symbol, interval, open_time, close_time, open_, high, low, close, volume, quote_volume, trade_count,
     taker_buy_volume, taker_buy_quote_volume, first_trade_id, last_trade_id, revision) = row
    return Candle(
        symbol=str(symbol), interval=str(interval), open_time_ms=int(open_time),  # type: ignore[call-overload]
        close_time_ms=int(close_time),  # type: ignore[call-overload]
        open=Decimal(str(open_)), high=Decimal(str(high)), low=Decimal(str(low)), close=Decimal(str(close)),
        volume=Decimal(str(volume)), quote_volume=Decimal(str(quote_volume)),
        trade_count=int(trade_count),  # type: ignore[call-overload]
        taker_buy_volume=Decimal(str(taker_buy_volume)),
        taker_buy_quote_volume=Decimal(str(taker_buy_quote_volume)),
        first_trade_id=int(first_trade_id), last_trade_id=int(last_trade_id),  # type: ignore[call-overload]
        closed=True, revision=int(revision),  # type: ignore[call-overload]
    )


class SQLiteStorage:
    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection
        # One thread at a time uses the connection.
        self._limiter = trio.CapacityLimiter(1)

    @classmethod
    async def open(cls, path: str) -> SQLiteStorage:
        return cls(await trio.to_thread.run_sync(_connect, path))

    async def _run(self, function: Callable[..., T], *args: object) -> T:
        return await trio.to_thread.run_sync(function, *args, limiter=self._limiter)

    async def write_ticks(self, ticks: Sequence[Tick]) -> None:
        rows = [
            (t.symbol, t.trade_id, str(t.price), str(t.quantity), t.trade_time_ms, t.event_time_ms,
             int(t.is_buyer_maker))
            for t in ticks
        ]
        await self._run(self._executemany, "INSERT OR IGNORE INTO ticks VALUES (?,?,?,?,?,?,?)", rows)

    async def write_candles(self, candles: Sequence[Candle]) -> None:
        rows = [_candle_row(candle) for candle in candles]
        await self._run(
            self._executemany, "INSERT OR REPLACE INTO candles VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows
        )

    def _executemany(self, sql: str, rows: list[tuple[object, ...]]) -> None:
        with self._connection:
            self._connection.execute("BEGIN")
            self._connection.executemany(sql, rows)

    async def last_trade_ids(self) -> dict[str, int]:
        rows = await self._run(
            lambda: self._connection.execute("SELECT symbol, MAX(trade_id) FROM ticks GROUP BY symbol").fetchall()
        )
        return {str(symbol): int(trade_id) for symbol, trade_id in rows}

    async def candles(
        self, symbol: str, interval: str, start_ms: int | None, end_ms: int | None, limit: int
    ) -> list[Candle]:
        def query() -> list[Candle]:
            rows = self._connection.execute(
                "SELECT * FROM candles WHERE symbol=? AND interval=? AND open_time_ms>=? AND open_time_ms<=?"
                " ORDER BY open_time_ms DESC LIMIT ?",
                (symbol, interval, start_ms if start_ms is not None else -1,
                 end_ms if end_ms is not None else 2**62, limit),
            ).fetchall()
            return [_candle_from_row(row) for row in reversed(rows)]

        result: list[Candle] = await self._run(query)
        return result

    async def close(self) -> None:
        await self._run(self._connection.close)
