"""The storage interface the tasks use; SQLite implements it (``app.store.sqlite``).

A server database can be added by implementing this Protocol; no task changes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Sequence
from contextlib import asynccontextmanager
from typing import Protocol

import trio

from app.model import Candle, Tick


class StorageError(RuntimeError):
    """The database cannot be used (newer schema, wrong file, ...); the message says what to do."""


class StorageWriteError(StorageError):
    """A write failed but may succeed later (disk full, database locked, I/O error); nothing was committed."""


class Storage(Protocol):
    """Durable history. Every method is async and safe to call from Trio tasks.

    A write returns only once it is committed: what a caller reports as persisted is.
    """

    async def write_ticks(self, ticks: Sequence[Tick]) -> None:
        """Stores ticks; a tick already stored (same symbol and trade id) is kept as it was."""
        ...

    async def write_candles(self, candles: Sequence[Candle]) -> None:
        """Stores closed candles; a revision replaces an older version of the same candle, never a newer one."""
        ...

    async def last_trade_ids(self) -> dict[str, int]:
        """The highest stored trade id per symbol (ingest resumes after it)."""
        ...

    async def candles(
        self, symbol: str, interval: str, start_ms: int | None, end_ms: int | None, limit: int
    ) -> list[Candle]:
        """Closed candles with ``start_ms <= open_time <= end_ms``, oldest first: with a start, the first
        ``limit`` from it; without, the last ``limit`` (as Binance's klines endpoint)."""
        ...

    async def ticks(self, symbol: str, start_ms: int, after_trade_id: int, limit: int) -> list[Tick]:
        """Up to ``limit`` ticks of ``symbol`` with trade time >= ``start_ms`` and trade id > ``after_trade_id``,
        in trade-id order (page through by passing the last id seen)."""
        ...

    async def added_symbols(self) -> list[str]:
        """Symbols added at run time (``POST /api/symbols``) and not removed since, oldest first."""
        ...

    async def set_symbol_added(self, symbol: str, added: bool) -> None:
        """Records that ``symbol`` was added at run time (``added``) or removed, so a restart keeps the change."""
        ...

    async def delete_ticks_before(self, cutoff_ms: int, limit: int) -> int:
        """Deletes up to ``limit`` ticks with a trade time before ``cutoff_ms`` (one short transaction, so
        writers are not held up); returns how many."""
        ...

    async def close(self) -> None: ...


@asynccontextmanager
async def closing_storage(opening: Awaitable[Storage]) -> AsyncIterator[Storage]:
    """The storage ``opening`` opens, closed when the block ends by any way: the close is shielded, so a block
    ended by cancellation (a stop) still closes the database cleanly."""
    storage = await opening
    try:
        yield storage
    finally:
        with trio.CancelScope(shield=True):
            await storage.close()
