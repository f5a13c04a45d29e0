"""The candle query: closed candles from memory (the newest) and the database (older ones), plus the open one.

One function for every reader (the REST route, API replicas and the Python API), so they all answer with the
same rules; ``CandleQuery`` binds it to one service's memory and database, the handle those readers hold.
"""

from __future__ import annotations

import attrs

from app.intervals import Interval
from app.model import Candle
from app.store.aggregator import CandleFeed
from app.store.storage import Storage


async def query_candles(
    feed: CandleFeed,
    storage: Storage,
    symbol: str,
    interval: Interval,
    *,
    start_ms: int | None = None,
    end_ms: int | None = None,
    limit: int = 500,
) -> list[Candle]:
    """Candles of ``symbol`` at ``interval``, oldest first, the open candle last (``closed`` false).

    As Binance's klines: ``start_ms <= open_time <= end_ms``; with a start, the first ``limit`` candles that
    exist at or after it (spans without candles, such as the service being down, are skipped, so a page is
    short only at the end of the history); without one, the last ``limit``. Where memory and the database both
    hold a candle, the higher revision wins.
    """
    name = interval.name
    by_open_time: dict[int, Candle] = {}
    oldest_in_memory = feed.oldest_recent_open_ms(symbol, name)
    memory_covers = oldest_in_memory is not None and (start_ms is None or start_ms >= oldest_in_memory)
    recent = feed.recent_closed(symbol, name, start_ms, end_ms, limit)
    if not (memory_covers and (start_ms is not None or len(recent) >= limit)):
        for candle in await storage.candles(symbol, name, start_ms, end_ms, limit):
            by_open_time[candle.open_time_ms] = candle
    for candle in recent:
        stored = by_open_time.get(candle.open_time_ms)
        if stored is None or candle.revision >= stored.revision:
            by_open_time[candle.open_time_ms] = candle
    current = feed.open_candle(symbol, name)
    if (
        current is not None
        and current.open_time_ms not in by_open_time
        and (start_ms is None or current.open_time_ms >= start_ms)
        and (end_ms is None or current.open_time_ms <= end_ms)
    ):
        by_open_time[current.open_time_ms] = current
    ordered = [by_open_time[open_time] for open_time in sorted(by_open_time)]
    return ordered[:limit] if start_ms is not None else ordered[-limit:]


@attrs.frozen
class CandleQuery:
    feed: CandleFeed
    storage: Storage

    async def __call__(
        self, symbol: str, interval: Interval, *, start_ms: int | None = None, end_ms: int | None = None,
        limit: int = 500,
    ) -> list[Candle]:
        """``query_candles`` over this service's memory and database."""
        return await query_candles(self.feed, self.storage, symbol, interval, start_ms=start_ms, end_ms=end_ms,
                                   limit=limit)
