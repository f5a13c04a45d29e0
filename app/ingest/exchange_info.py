"""Which symbols Binance lists, from ``exchangeInfo`` (cached): unknown symbols are refused before subscribing."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

import trio

from app.ingest.rest import BinanceRest

log = logging.getLogger(__name__)

# The whole list is refreshed this often; an unknown symbol refreshes it sooner (new listings).
EXCHANGE_INFO_TTL_SECONDS = 3600.0
UNKNOWN_REFRESH_AFTER_SECONDS = 60.0
# The subscribed symbols' statuses are checked this often (weight 20 a time): a symbol that stops trading
# (BREAK, delisted) is noticed within it.
TRADING_STATUS_CHECK_SECONDS = 60.0
TRADING = "TRADING"
# Our status for a symbol exchangeInfo no longer lists: REST then answers -1121 "Invalid symbol." for it.
DELISTED = "DELISTED"


def status_changes(
    known: Mapping[str, str], listed: Mapping[str, str], symbols: Iterable[str]
) -> list[tuple[str, str]]:
    """``(symbol, new status)`` for each of ``symbols`` whose exchangeInfo status (``listed``; ``DELISTED`` when
    absent) differs from ``known`` (``TRADING`` when absent)."""
    changes = []
    for symbol in symbols:
        new = listed.get(symbol, DELISTED)
        if new != known.get(symbol, TRADING):
            changes.append((symbol, new))
    return changes


class SymbolDirectory:
    """Symbol -> Binance status (``TRADING``, ``BREAK``, ...), fetched once and cached."""

    def __init__(self, rest: BinanceRest, *, ttl: float = EXCHANGE_INFO_TTL_SECONDS) -> None:
        self._rest = rest
        self._ttl = ttl
        self._statuses: dict[str, str] = {}
        self._fetched_at: float | None = None
        self._lock = trio.Lock()

    async def status_of(self, symbol: str) -> str | None:
        """The symbol's trading status, or None when Binance does not list it. Raises RestError when the list
        cannot be fetched."""
        async with self._lock:
            now = trio.current_time()
            age = None if self._fetched_at is None else now - self._fetched_at
            stale = age is None or age > self._ttl
            if stale or (symbol not in self._statuses and age is not None and age > UNKNOWN_REFRESH_AFTER_SECONDS):
                await self._refresh()
        return self._statuses.get(symbol)

    async def refresh(self) -> Mapping[str, str]:
        """Fetches the list now; returns symbol -> status. Raises RestError when it cannot be fetched."""
        async with self._lock:
            await self._refresh()
        return self._statuses

    async def _refresh(self) -> None:
        info = await self._rest.exchange_info()
        statuses: dict[str, str] = {}
        for entry in info["symbols"]:
            if isinstance(entry, dict) and isinstance(entry.get("symbol"), str):
                statuses[entry["symbol"]] = str(entry.get("status", "TRADING"))
        self._statuses = statuses
        self._fetched_at = trio.current_time()
        log.info("exchange info fetched symbols=%d", len(statuses))
