"""The trades the simulator has published, per symbol: the ground truth for tests and the REST side's data.

Only published trades are here, so REST never shows a trade the socket has not (it is one exchange).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable

from app.model import Tick
from app.replay.agg_trades import AggTrade, group, joins


class SymbolTrades:
    """One symbol's published trades in publication order (ids ascending; times too, unless a test publishes
    times that go backwards), at most ``cap``, and the aggregate trade each belongs to (numbered from 0 in
    publication order, so ids never change)."""

    def __init__(self, cap: int) -> None:
        self._cap = cap
        self._ticks: list[Tick] = []
        self._agg_ids: list[int] = []  # parallel to ``_ticks``, ascending
        # Evicted trades stay in the list until compaction, so eviction is amortised O(1).
        self._start = 0
        # The aggregate of the newest evicted trade: what is left of it is not served (its quantity is gone).
        self._evicted_agg = -1
        # While times ascend, time lookups bisect; after a step back in time they scan.
        self._times_ascending = True

    def append(self, tick: Tick) -> None:
        if not self._ticks:
            agg_id = self._evicted_agg + 1
        else:
            agg_id = self._agg_ids[-1] + (0 if joins(self._ticks[-1], tick) else 1)
            if tick.trade_time_ms < self._ticks[-1].trade_time_ms:
                self._times_ascending = False
        self._ticks.append(tick)
        self._agg_ids.append(agg_id)
        if len(self._ticks) - self._start > self._cap:
            self._evicted_agg = self._agg_ids[self._start]
            self._start += 1
            if self._start >= self._cap:
                del self._ticks[: self._start]
                del self._agg_ids[: self._start]
                self._start = 0

    def __len__(self) -> int:
        return len(self._ticks) - self._start

    def all(self) -> list[Tick]:
        return self._ticks[self._start :]

    def recent(self, limit: int) -> list[Tick]:
        return self._ticks[max(self._start, len(self._ticks) - limit) :]

    def from_id(self, from_id: int, limit: int) -> list[Tick]:
        first = bisect_left(self._ticks, from_id, lo=self._start, key=_trade_id)
        return self._ticks[first : first + limit]

    def between(self, start_ms: int, end_ms: int) -> list[Tick]:
        """Trades with ``start_ms <= trade time <= end_ms``, in id order."""
        if not self._times_ascending:
            return [tick for tick in self.all() if start_ms <= tick.trade_time_ms <= end_ms]
        first = bisect_left(self._ticks, start_ms, lo=self._start, key=_trade_time)
        last = bisect_right(self._ticks, end_ms, lo=first, key=_trade_time)
        return self._ticks[first:last]

    def last_before(self, time_ms: int) -> Tick | None:
        """The last trade (by id) before ``time_ms``, if any is retained."""
        if not self._times_ascending:
            return next((tick for tick in reversed(self.all()) if tick.trade_time_ms < time_ms), None)
        index = bisect_left(self._ticks, time_ms, lo=self._start, key=_trade_time)
        return self._ticks[index - 1] if index > self._start else None

    # --- aggregate trades (whole ones only) ---

    def agg_from_id(self, agg_id: int, limit: int) -> list[AggTrade]:
        """Up to ``limit`` aggregates from ``agg_id`` on."""
        first = bisect_left(self._agg_ids, max(agg_id, self._evicted_agg + 1), lo=self._start)
        return self._aggregates(first, limit)

    def agg_between(self, start_ms: int, end_ms: int, limit: int) -> list[AggTrade]:
        """The first ``limit`` aggregates with ``start_ms <= time <= end_ms`` (trades of one aggregate share
        their time, so a window never cuts one)."""
        first = bisect_left(self._ticks, start_ms, lo=self._start, key=_trade_time)
        last = bisect_right(self._ticks, end_ms, lo=first, key=_trade_time)
        first = bisect_left(self._agg_ids, self._evicted_agg + 1, lo=first, hi=max(first, last))
        return self._aggregates(first, limit, stop=last)

    def agg_recent(self, limit: int) -> list[AggTrade]:
        """The newest ``limit`` aggregates."""
        if len(self) == 0:
            return []
        oldest = max(self._agg_ids[-1] - limit + 1, self._evicted_agg + 1)
        return self._aggregates(bisect_left(self._agg_ids, oldest, lo=self._start), limit)

    def _aggregates(self, first: int, limit: int, stop: int | None = None) -> list[AggTrade]:
        """Up to ``limit`` whole aggregates of the trades at ``first`` .. ``stop`` (exclusive)."""
        stop = len(self._ticks) if stop is None else stop
        if first >= stop or limit < 1:
            return []
        # Aggregates are numbered consecutively, so the end of the ``limit``-th one is found by bisection.
        end = bisect_left(self._agg_ids, self._agg_ids[first] + limit, lo=first, hi=stop)
        return group(self._ticks[first:end], self._agg_ids[first:end])

    @property
    def last_time_ms(self) -> int | None:
        """The latest trade time (the exchange's "now" for this symbol)."""
        if not len(self):
            return None
        if self._times_ascending:
            return self._ticks[-1].trade_time_ms
        return max(tick.trade_time_ms for tick in self.all())


def _trade_id(tick: Tick) -> int:
    return tick.trade_id


def _trade_time(tick: Tick) -> int:
    return tick.trade_time_ms


class TradeLedger:
    def __init__(self, cap_per_symbol: int) -> None:
        self._cap = cap_per_symbol
        self._symbols: dict[str, SymbolTrades] = {}
        self.total = 0

    def add(self, ticks: Iterable[Tick]) -> None:
        for tick in ticks:
            trades = self._symbols.get(tick.symbol)
            if trades is None:
                trades = self._symbols[tick.symbol] = SymbolTrades(self._cap)
            trades.append(tick)
            self.total += 1

    def symbol(self, symbol: str) -> SymbolTrades:
        trades = self._symbols.get(symbol)
        if trades is None:
            trades = self._symbols[symbol] = SymbolTrades(self._cap)
        return trades

    def newest_time_ms(self) -> int | None:
        """The newest published trade's time: the exchange's "now" for its rolling statistics."""
        times = [t for t in (trades.last_time_ms for trades in self._symbols.values()) if t is not None]
        return max(times) if times else None

    def count(self, symbol: str) -> int:
        trades = self._symbols.get(symbol)
        return 0 if trades is None else len(trades)
