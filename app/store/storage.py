"""The storage interface the tasks use; SQLite implements it (``app.store.sqlite``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from app.model import Candle, Tick


class Storage(Protocol):
    """Durable history. Every method is async and safe to call from Trio tasks."""

    async def write_ticks(self, ticks: Sequence[Tick]) -> None: ...

    async def write_candles(self, candles: Sequence[Candle]) -> None: ...

    async def last_trade_ids(self) -> dict[str, int]: ...

    async def candles(
        self, symbol: str, interval: str, start_ms: int | None, end_ms: int | None, limit: int
    ) -> list[Candle]: ...

    async def close(self) -> None: ...
