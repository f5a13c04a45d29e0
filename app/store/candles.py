"""Candles with Binance's kline semantics: a pure builder (no Trio, no clock).

Rules (Binance's, see BINANCE.md):

* Open time aligned in UTC (``app.intervals``); close time = next open time - 1 ms.
* Open/close are the prices of the first/last trade *by trade id*; high/low, base volume, quote volume
  (sum of price * qty, exact), trade count, taker-buy base/quote volume (trades with ``m == false``: the buyer was
  the taker), first and last trade id.
* An interval without trades still has a candle, as Binance's klines do: ``first_trade_id = last_trade_id = -1``,
  no volume, ``trade_count = 0``, open = high = low = close = the previous candle's close. Such a candle is
  produced only once something passes its interval: a later trade, or the clock (``close_due``). A series
  starts with its first trade; nothing is invented before it.
* A trade for an interval that is already closed (only after a repaired gap) revises that candle: the corrected
  candle is returned with ``revision`` incremented, and empty candles after it whose prices derive from its close
  are revised too. Candles still in the bounded in-memory ring are revised here; a late trade for an older one
  is counted in ``late_trades_unrevisable`` and handed out (``take_late_trades``) to be applied to the stored
  candle (``revise_candle``, by ``persist.persist_late_trades``).
* Seeding (``seed_edges``): a candle whose interval began before the service saw its trades (the first trade of a
  series, or the first of an interval after a jump in trade ids: start-up, a symbol added, a resume) is marked
  ``complete=False`` and asked for (``take_seed_requests``); ``apply_seed`` then replaces it with Binance's kline
  plus the streamed trades after the kline's last trade id (trade ids are consecutive, so that is exact). A seed
  that could not be fetched leaves the candle ``complete=False`` for good.
"""

from __future__ import annotations

import bisect
import decimal
import logging
from collections.abc import Iterable, Sequence
from decimal import Decimal

import attrs

from app.intervals import DAY_MS, Interval
from app.model import Candle, CandleSeed, SeedRequest, Tick
from app.store.candle_ring import ClosedRing

log = logging.getLogger(__name__)

# Exact arithmetic: 60 digits never round for Binance's 8-decimal prices and quantities, and if anything ever
# would, Inexact raises instead of silently corrupting a volume (the default context keeps only 28 digits).
EXACT = decimal.Context(prec=60, traps=[decimal.Inexact, decimal.InvalidOperation, decimal.Overflow])
_ZERO = Decimal(0)
NO_TRADE_ID = -1

# The most empty candles produced at once for one series (about 2.8 hours of 1s candles, a week of 1m ones);
# older empty intervals of a longer silence are skipped and counted.
MAX_EMPTY_FILL = 10_000

# Trades kept per series while its seed is fetched (about a minute of the busiest market); beyond that the
# candle stays incomplete (the "too many trades" case).
MAX_SEED_PENDING_TICKS = 200_000

# Closed candles kept in memory per (symbol, interval), for the API and for revisions by late trades: enough to
# cover RECENT_SPAN_MS, within these bounds (1s: 1000 = 16 min; 1m: 120; 5m and longer: 60). Older candles are
# read from storage; a late trade older than the ring is counted, not applied. The ring holds packed records
# (``app.store.candle_ring``), decoded when read.
RECENT_SPAN_MS = 2 * 3_600_000
RECENT_MIN = 60
RECENT_MAX = 1000
# Closed candles of a series handed to a new leader at most (``CandleBuilder.unsettled``): a late trade for an
# older one than these is counted, not applied.
MAX_UNSETTLED = 100


def default_ring_size(interval: Interval) -> int:
    return max(RECENT_MIN, min(RECENT_MAX, -(-RECENT_SPAN_MS // interval.nominal_ms)))


class _Bar:
    """A candle being built (mutable, so a trade costs no object allocation)."""

    __slots__ = (
        "close",
        "close_time_ms",
        "complete",
        "first_trade_id",
        "high",
        "last_trade_id",
        "low",
        "open",
        "open_time_ms",
        "quote_volume",
        "taker_buy_quote_volume",
        "taker_buy_volume",
        "trade_count",
        "volume",
    )

    def __init__(self, open_time_ms: int, close_time_ms: int, previous_close: Decimal) -> None:
        self.open_time_ms = open_time_ms
        self.close_time_ms = close_time_ms
        self.open = self.high = self.low = self.close = previous_close
        self.volume = self.quote_volume = self.taker_buy_volume = self.taker_buy_quote_volume = _ZERO
        self.trade_count = 0
        self.first_trade_id = self.last_trade_id = NO_TRADE_ID
        self.complete = True

    @classmethod
    def from_candle(cls, candle: Candle) -> _Bar:
        bar = cls(candle.open_time_ms, candle.close_time_ms, candle.close)
        bar.open, bar.high, bar.low = candle.open, candle.high, candle.low
        bar.volume, bar.quote_volume = candle.volume, candle.quote_volume
        bar.taker_buy_volume, bar.taker_buy_quote_volume = candle.taker_buy_volume, candle.taker_buy_quote_volume
        bar.trade_count = candle.trade_count
        bar.first_trade_id, bar.last_trade_id = candle.first_trade_id, candle.last_trade_id
        bar.complete = candle.complete
        return bar

    def add(self, tick: Tick, quote: Decimal) -> None:
        """Adds a trade (``quote`` = price * quantity); call under ``decimal.localcontext(EXACT)``."""
        price, quantity, trade_id = tick.price, tick.quantity, tick.trade_id
        if self.trade_count == 0:
            self.open = self.high = self.low = self.close = price
            self.first_trade_id = self.last_trade_id = trade_id
        else:
            # By trade id, not arrival: a repaired gap delivers older trades after newer ones.
            if trade_id < self.first_trade_id:
                self.open, self.first_trade_id = price, trade_id
            if trade_id > self.last_trade_id:
                self.close, self.last_trade_id = price, trade_id
            if price > self.high:
                self.high = price
            elif price < self.low:
                self.low = price
        self.trade_count += 1
        self.volume += quantity
        self.quote_volume += quote
        if not tick.is_buyer_maker:
            self.taker_buy_volume += quantity
            self.taker_buy_quote_volume += quote

    def merge(self, part: Candle) -> None:
        """Adds a finer closed candle lying inside this bar (restart: rebuilding a long open candle)."""
        if not part.complete:
            self.complete = False
        if part.trade_count == 0:
            return
        if self.trade_count == 0:
            self.open, self.high, self.low, self.close = part.open, part.high, part.low, part.close
            self.first_trade_id, self.last_trade_id = part.first_trade_id, part.last_trade_id
        else:
            if part.first_trade_id < self.first_trade_id:
                self.open, self.first_trade_id = part.open, part.first_trade_id
            if part.last_trade_id > self.last_trade_id:
                self.close, self.last_trade_id = part.close, part.last_trade_id
            self.high = max(self.high, part.high)
            self.low = min(self.low, part.low)
        self.trade_count += part.trade_count
        self.volume += part.volume
        self.quote_volume += part.quote_volume
        self.taker_buy_volume += part.taker_buy_volume
        self.taker_buy_quote_volume += part.taker_buy_quote_volume

    def candle(self, symbol: str, interval: str, *, closed: bool, revision: int = 0) -> Candle:
        return Candle(
            symbol=symbol,
            interval=interval,
            open_time_ms=self.open_time_ms,
            close_time_ms=self.close_time_ms,
            open=self.open,
            high=self.high,
            low=self.low,
            close=self.close,
            volume=self.volume,
            quote_volume=self.quote_volume,
            trade_count=self.trade_count,
            taker_buy_volume=self.taker_buy_volume,
            taker_buy_quote_volume=self.taker_buy_quote_volume,
            first_trade_id=self.first_trade_id,
            last_trade_id=self.last_trade_id,
            closed=closed,
            revision=revision,
            complete=self.complete,
        )


@attrs.frozen
class LateTrade:
    """A trade for a closed candle no longer in memory: it is applied to the stored candle."""

    interval: str
    open_time_ms: int
    tick: Tick


class _AwaitingSeed:
    """The trades a series added to the candle at ``open_time_ms`` while its seed is being fetched."""

    __slots__ = ("open_time_ms", "ticks")

    def __init__(self, open_time_ms: int) -> None:
        self.open_time_ms = open_time_ms
        # None once more than MAX_SEED_PENDING_TICKS arrived: the seed can no longer be applied.
        self.ticks: list[Tick] | None = []

    def note(self, tick: Tick) -> bool:
        """Keeps ``tick``; False when there are too many to keep."""
        ticks = self.ticks
        if ticks is None:
            return False
        if len(ticks) >= MAX_SEED_PENDING_TICKS:
            self.ticks = None
            return False
        ticks.append(tick)
        return True


class _Series:
    """One (symbol, interval): the open bar and a ring of recent closed candles (packed), oldest first."""

    __slots__ = ("awaiting", "closed", "current", "interval", "last_trade_id", "replay_floor_ms", "symbol")

    def __init__(self, symbol: str, interval: Interval, recent_limit: int) -> None:
        self.symbol = symbol
        self.interval = interval
        self.current: _Bar | None = None
        self.closed = ClosedRing(symbol, interval.name, recent_limit)
        # While restoring: trades before this time are already in stored candles and are skipped.
        self.replay_floor_ms: int | None = None
        # The highest trade id of the closed candles (None: none yet): a bar whose first trade does not follow
        # it may lack trades from before and needs a seed.
        self.last_trade_id: int | None = None
        self.awaiting: _AwaitingSeed | None = None

    def close_current(self, out: list[Candle]) -> _Bar:
        """Closes the open bar (there must be one) and returns it."""
        bar = self.current
        assert bar is not None
        if bar.last_trade_id != NO_TRADE_ID and (self.last_trade_id is None or bar.last_trade_id > self.last_trade_id):
            self.last_trade_id = bar.last_trade_id
        candle = bar.candle(self.symbol, self.interval.name, closed=True)
        self.closed.append(candle)
        out.append(candle)
        return bar

    def roll_to(self, open_time_ms: int, out: list[Candle], *, fill_empty: bool = True) -> int:
        """Closes the open bar and every empty interval before ``open_time_ms``; opens the bar there.

        Returns how many empty intervals were skipped: after a very long silence (the service down for days
        with 1s candles) only the last ``MAX_EMPTY_FILL`` are produced, so memory stays bounded. Without
        ``fill_empty`` no empty candle is made: the service did not see those intervals (a jump in trade ids).
        """
        previous = self.close_current(out)
        interval = self.interval
        if not fill_empty:
            self.current = _Bar(open_time_ms, interval.close_time(open_time_ms), previous.close)
            return 0
        next_open = interval.next_open_time(previous.open_time_ms)
        skipped = 0
        if interval.name != "1M":
            missing = (open_time_ms - next_open) // interval.nominal_ms
            if missing > MAX_EMPTY_FILL:
                skipped = missing - MAX_EMPTY_FILL
                next_open += skipped * interval.nominal_ms
        while next_open < open_time_ms:
            empty = _Bar(next_open, interval.close_time(next_open), previous.close)
            candle = empty.candle(self.symbol, interval.name, closed=True)
            self.closed.append(candle)
            out.append(candle)
            next_open = interval.next_open_time(next_open)
        self.current = _Bar(open_time_ms, interval.close_time(open_time_ms), previous.close)
        return skipped


@attrs.define
class CandleCounters:
    candles_closed: int = 0
    empty_candles: int = 0
    late_trades: int = 0
    revisions: int = 0
    # Late trades for candles no longer in memory: their ticks are stored, the candle is not corrected.
    late_trades_unrevisable: int = 0
    # Trades already counted in a closed candle (re-sent after a restart); ignored.
    duplicate_trades: int = 0
    # Empty intervals not produced after a silence longer than MAX_EMPTY_FILL intervals.
    empty_candles_skipped: int = 0
    # Candles marked complete=False and asked to be seeded; completed by a seed; left incomplete.
    seeds_requested: int = 0
    seeds_applied: int = 0
    candles_incomplete: int = 0


class CandleBuilder:
    """Open candles per (symbol, interval) and recent closed ones.

    ``update`` and ``close_due`` return the candles that closed or were revised, in order; the open candle is
    readable at any time with ``open_candle``.
    """

    def __init__(
        self, intervals: Sequence[Interval], *, recent_limit: int | None = None, seed_edges: bool = False
    ) -> None:
        """``recent_limit``: closed candles kept in memory per series (None: ``default_ring_size``);
        ``seed_edges``: mark and request seeds for candles that began before their trades were seen."""
        if not intervals:
            raise ValueError("no candle interval configured")
        self.intervals = tuple(intervals)
        self._ring_sizes = {interval.name: recent_limit or default_ring_size(interval) for interval in intervals}
        self.counters = CandleCounters()
        self._series: dict[str, tuple[_Series, ...]] = {}
        self.seed_edges = seed_edges
        self._seed_requests: list[SeedRequest] = []
        self._late_trades: list[LateTrade] = []

    def _series_of(self, symbol: str) -> tuple[_Series, ...]:
        series = self._series.get(symbol)
        if series is None:
            series = self._series[symbol] = tuple(
                _Series(symbol, interval, self._ring_sizes[interval.name]) for interval in self.intervals
            )
        return series

    def _one_series(self, symbol: str, interval: str) -> _Series | None:
        for series in self._series.get(symbol, ()):
            if series.interval.name == interval:
                return series
        return None

    @property
    def symbols(self) -> tuple[str, ...]:
        return tuple(self._series)

    @property
    def symbol_count(self) -> int:
        return len(self._series)

    # --- feeding -------------------------------------------------------------------------------------------

    def update(self, tick: Tick) -> list[Candle]:
        """Adds one trade; returns the candles it closed (with empty ones between) or revised."""
        out: list[Candle] = []
        with decimal.localcontext(EXACT):
            self._update(tick, out)
        return out

    def update_many(self, ticks: Iterable[Tick]) -> list[Candle]:
        out: list[Candle] = []
        with decimal.localcontext(EXACT):
            for tick in ticks:
                self._update(tick, out)
        return out

    def _update(self, tick: Tick, out: list[Candle]) -> None:
        trade_time = tick.trade_time_ms
        quote = tick.price * tick.quantity
        for series in self._series_of(tick.symbol):
            if series.replay_floor_ms is not None and trade_time < series.replay_floor_ms:
                continue
            bar = series.current
            if bar is None:
                if series.closed and trade_time <= series.closed[-1].close_time_ms:
                    # Closed because the symbol stopped trading; a late trade revises its candle.
                    self._revise(series, tick, quote, out)
                    continue
                open_time = series.interval.open_time(trade_time)
                bar = series.current = _Bar(open_time, series.interval.close_time(open_time), tick.price)
            elif trade_time > bar.close_time_ms:
                before = len(out)
                # Only consecutive trade ids prove the intervals in between had no trade.
                fill_empty = not self.seed_edges or tick.trade_id == max(
                    bar.last_trade_id, NO_TRADE_ID if series.last_trade_id is None else series.last_trade_id) + 1
                self.counters.empty_candles_skipped += series.roll_to(series.interval.open_time(trade_time), out,
                                                                      fill_empty=fill_empty)
                self._count_closed(out, before)
                bar = series.current
                assert bar is not None
            elif trade_time < bar.open_time_ms:
                self._revise(series, tick, quote, out)
                continue
            elif tick.trade_id <= bar.last_trade_id and _complete(
                bar.trade_count, bar.first_trade_id, bar.last_trade_id, tick.trade_id
            ):
                # Already in the open candle: after a restart that rebuilt it, or from its seed.
                self.counters.duplicate_trades += 1
                continue
            if bar.trade_count == 0 and self.seed_edges:
                self._check_edge(series, bar, tick)
            awaiting = series.awaiting
            if awaiting is not None and awaiting.open_time_ms == bar.open_time_ms and not awaiting.note(tick):
                self._give_up(series, "too many trades while the seed was fetched")
            bar.add(tick, quote)

    def _check_edge(self, series: _Series, bar: _Bar, tick: Tick) -> None:
        """At a bar's first trade: when it does not follow the series' last one, earlier trades of the interval
        may exist that the service did not see; the bar is marked incomplete and its seed requested."""
        last = series.last_trade_id
        if last is not None and tick.trade_id == last + 1:
            return
        bar.complete = False
        self._await_seed(series, bar.open_time_ms)

    def _await_seed(self, series: _Series, open_time_ms: int) -> None:
        if series.awaiting is not None:  # one seed at a time per series; the older candle stays incomplete
            self._give_up(series, "a newer candle needs a seed")
        series.awaiting = _AwaitingSeed(open_time_ms)
        self._seed_requests.append(SeedRequest(series.symbol, series.interval.name, open_time_ms))
        self.counters.seeds_requested += 1

    def _give_up(self, series: _Series, reason: str) -> None:
        awaiting = series.awaiting
        if awaiting is None:
            return
        series.awaiting = None
        self.counters.candles_incomplete += 1
        log.warning("candle left incomplete symbol=%s interval=%s open_time_ms=%d reason=%r", series.symbol,
                    series.interval.name, awaiting.open_time_ms, reason)

    def take_late_trades(self) -> list[LateTrade]:
        """The late trades for candles no longer in memory since the last call (for the stored candles)."""
        late, self._late_trades = self._late_trades, []
        return late

    def take_seed_requests(self) -> list[SeedRequest]:
        """The seeds asked for since the last call."""
        requests, self._seed_requests = self._seed_requests, []
        return requests

    def apply_seed(self, seed: CandleSeed) -> list[Candle]:
        """Completes the candle ``seed`` was asked for: Binance's kline plus the streamed trades after its last
        trade id. Returns the revised candle (and empty ones after it) when it had closed already."""
        series = self._one_series(seed.symbol, seed.interval)
        if series is None or series.awaiting is None or series.awaiting.open_time_ms != seed.open_time_ms:
            return []
        ticks = series.awaiting.ticks
        if seed.kline is None or ticks is None:
            self._give_up(series, seed.reason or "too many trades while the seed was fetched")
            return []
        series.awaiting = None
        bar = _Bar.from_candle(seed.kline)
        with decimal.localcontext(EXACT):
            for tick in ticks:
                if tick.trade_id > seed.kline.last_trade_id:
                    bar.add(tick, tick.price * tick.quantity)
        # Consecutive ids or nothing: a kline that ends before the first streamed trade leaves a hole.
        bar.complete = _complete(bar.trade_count, bar.first_trade_id, bar.last_trade_id, bar.first_trade_id)
        if bar.complete:
            self.counters.seeds_applied += 1
        else:
            self.counters.candles_incomplete += 1
            log.warning("candle left incomplete symbol=%s interval=%s open_time_ms=%d reason=%r", series.symbol,
                        series.interval.name, seed.open_time_ms, "the kline does not reach the streamed trades")
        current = series.current
        if current is not None and current.open_time_ms == seed.open_time_ms:
            series.current = bar
            return []
        index = _find(series.closed, seed.open_time_ms)
        if index is None:
            self.counters.candles_incomplete += 1
            return []
        old = series.closed[index]
        revised = bar.candle(series.symbol, series.interval.name, closed=True, revision=old.revision + 1)
        if series.last_trade_id is None or revised.last_trade_id > series.last_trade_id:
            series.last_trade_id = revised.last_trade_id
        series.closed[index] = revised
        out = [revised]
        self.counters.revisions += 1
        self._follow_close(series, index, out)
        return out

    def close_due(self, symbol: str, before_ms: int, *, stopped: bool = False) -> list[Candle]:
        """Closes every candle of ``symbol`` whose close time is before ``before_ms``.

        The caller decides when the clock may close candles (close time plus a grace, feed healthy); the
        interval that then opens is empty until a trade arrives, as on Binance. For a symbol that ``stopped``
        trading (BREAK, delisted) none opens: no empty candles are made up while it is stopped (a later trade
        opens its own).
        """
        out: list[Candle] = []
        for series in self._series.get(symbol, ()):
            bar = series.current
            if bar is None or bar.close_time_ms >= before_ms:
                continue
            before = len(out)
            if stopped:
                series.close_current(out)
                series.current = None
            else:
                self.counters.empty_candles_skipped += series.roll_to(series.interval.open_time(before_ms), out)
            self._count_closed(out, before)
        return out

    def _count_closed(self, out: list[Candle], start: int) -> None:
        self.counters.candles_closed += len(out) - start
        self.counters.empty_candles += sum(1 for candle in out[start:] if candle.trade_count == 0)

    def next_close_ms(self, symbol: str) -> int | None:
        """The earliest close time among the open candles of ``symbol`` (None: no open candle)."""
        times = [series.current.close_time_ms for series in self._series.get(symbol, ()) if series.current]
        return min(times) if times else None

    def _revise(self, series: _Series, tick: Tick, quote: Decimal, out: list[Candle]) -> None:
        open_time = series.interval.open_time(tick.trade_time_ms)
        ring = series.closed
        index = _find(ring, open_time)
        old = ring[index] if index is not None else None
        if old is not None and _holds(old, tick.trade_id):
            # Already counted: after a restart the ingest resumes from the last stored *tick*, which can be
            # behind the last stored candle. Trade ids are consecutive, so a candle without holes is complete.
            self.counters.duplicate_trades += 1
            return
        self.counters.late_trades += 1
        if index is None or old is None:
            self.counters.late_trades_unrevisable += 1
            self._late_trades.append(LateTrade(series.interval.name, open_time, tick))
            return
        awaiting = series.awaiting
        if awaiting is not None and awaiting.open_time_ms == open_time and not awaiting.note(tick):
            self._give_up(series, "too many trades while the seed was fetched")
        bar = _Bar.from_candle(old)
        bar.add(tick, quote)
        revised = bar.candle(series.symbol, series.interval.name, closed=True, revision=old.revision + 1)
        ring[index] = revised
        out.append(revised)
        self.counters.revisions += 1
        self._follow_close(series, index, out)

    def _follow_close(self, series: _Series, index: int, out: list[Candle]) -> None:
        """Empty candles after a revised one carry the previous close: follow a changed close forward."""
        ring = series.closed
        close = ring[index].close
        for later_index in range(index + 1, len(ring)):
            later = ring[later_index]
            if later.trade_count:
                return
            if later.close != close:
                later = attrs.evolve(later, open=close, high=close, low=close, close=close,
                                     revision=later.revision + 1)
                ring[later_index] = later
                out.append(later)
                self.counters.revisions += 1
        current = series.current
        if current is not None and current.trade_count == 0:
            current.open = current.high = current.low = current.close = close

    # --- reading -------------------------------------------------------------------------------------------

    def open_candle(self, symbol: str, interval: str) -> Candle | None:
        """The candle being built for (symbol, interval), ``closed=False``; None before the first trade."""
        series = self._one_series(symbol, interval)
        if series is None or series.current is None:
            return None
        return series.current.candle(symbol, interval, closed=False)

    def recent_closed(
        self, symbol: str, interval: str, start_ms: int | None, end_ms: int | None, limit: int
    ) -> list[Candle]:
        """Closed candles (latest revision) with ``start_ms <= open_time <= end_ms``, oldest first.

        As Binance's klines endpoint: with a start, the first ``limit`` from it; without, the last ``limit``.
        Only the in-memory ring (``ring_size`` per series) is searched; older ones are in storage.
        """
        series = self._one_series(symbol, interval)
        if series is None or limit <= 0:
            return []
        ring = series.closed
        keys = ring.open_times()
        low = 0 if start_ms is None else bisect.bisect_left(keys, start_ms)
        high = len(ring) if end_ms is None else bisect.bisect_right(keys, end_ms)
        if start_ms is not None:
            return ring.slice(low, min(high, low + limit))
        return ring.slice(max(low, high - limit), high)

    def oldest_recent_open_ms(self, symbol: str, interval: str) -> int | None:
        series = self._one_series(symbol, interval)
        if series is None or not series.closed:
            return None
        return series.closed.open_time_at(0)

    def ring_size(self, interval: Interval) -> int:
        return self._ring_sizes[interval.name]

    def tiling_chain(self, interval: Interval) -> list[Interval]:
        """``interval`` and the configured intervals that tile it, each the coarsest tiling the one before
        (``1M`` -> ``1d`` -> ``1h`` -> ``1m``): on restart a long open candle is rebuilt from the stored closed
        candles down this chain, and only the finest needs raw ticks."""
        chain = [interval]
        while True:
            finer = [candidate for candidate in self.intervals if tiles(candidate, chain[-1])]
            if not finer:
                return chain
            chain.append(max(finer, key=lambda candidate: candidate.nominal_ms))

    def earliest_open_time_ms(self) -> int | None:
        """From when raw ticks are needed to rebuild every open candle on restart: the oldest open time among
        the finest intervals of the tiling chains (see ``tiling_chain``)."""
        finest = {self.tiling_chain(interval)[-1].name for interval in self.intervals}
        times = [
            series.current.open_time_ms
            for all_series in self._series.values()
            for series in all_series
            if series.current is not None and series.interval.name in finest
        ]
        return min(times) if times else None

    # --- restoring -----------------------------------------------------------------------------------------

    def seed(self, symbol: str, interval: str, recent: Sequence[Candle]) -> None:
        """Restores a series from stored closed candles (oldest first).

        The series continues after the last of them: its next interval opens empty with the previous close, and
        until ``end_replay`` trades before that are skipped (they are in the stored candles already).
        """
        series = next((s for s in self._series_of(symbol) if s.interval.name == interval), None)
        if series is None:
            raise ValueError(f"interval {interval!r} is not configured")
        if not recent:
            return
        series.closed.replace_all(recent)
        series.last_trade_id = max((candle.last_trade_id for candle in recent
                                    if candle.last_trade_id != NO_TRADE_ID), default=None)
        last = recent[-1]
        next_open = series.interval.next_open_time(last.open_time_ms)
        series.current = _Bar(next_open, series.interval.close_time(next_open), last.close)
        series.replay_floor_ms = next_open
        incomplete = [candle for candle in recent if not candle.complete]
        if self.seed_edges and incomplete:
            # Its seed was not stored before the last stop (or it failed then): ask again; the kline now holds
            # every trade of that closed interval.
            self._await_seed(series, incomplete[-1].open_time_ms)

    def continue_candle(self, candle: Candle) -> None:
        """Continues a series from a published version of one of its candles (a new leader taking over, given
        the series' ``unsettled`` candles oldest first): later trades are added to it, and late ones revise it,
        exactly as the old leader would have done (a revision above the published one)."""
        series = next((s for s in self._series_of(candle.symbol) if s.interval.name == candle.interval), None)
        if series is None:
            raise ValueError(f"interval {candle.interval!r} is not configured")
        if candle.closed:
            ring = series.closed
            if ring and ring.open_time_at(len(ring) - 1) < candle.open_time_ms:
                ring.append(candle)
            else:
                ring.replace_all((candle,))
            if candle.last_trade_id != NO_TRADE_ID:
                series.last_trade_id = candle.last_trade_id
            next_open = series.interval.next_open_time(candle.open_time_ms)
            series.current = _Bar(next_open, series.interval.close_time(next_open), candle.close)
        else:
            series.current = _Bar.from_candle(candle)

    def unsettled(self, symbol: str, interval: str) -> list[Candle]:
        """The candles of (symbol, interval) that trades not seen yet may still change, oldest first: the open
        one and, while it has no trade, the closed ones from the newest with trades on (the clock may have closed
        them before all their trades arrived). What a new leader must continue (``continue_candle``) so that
        its versions of them have higher revisions than those published (at most ``MAX_UNSETTLED`` closed)."""
        series = self._one_series(symbol, interval)
        if series is None:
            return []
        current = series.current
        out = [] if current is None else [current.candle(symbol, interval, closed=False)]
        if current is not None and current.trade_count:
            return out
        ring = series.closed
        closed: list[Candle] = []
        for index in range(len(ring) - 1, max(-1, len(ring) - 1 - MAX_UNSETTLED), -1):
            closed.append(ring[index])
            if closed[-1].trade_count:
                break
        return [*reversed(closed), *out]

    def seed_from_finer(self, symbol: str, interval: str, finer: Sequence[Candle], floor_ms: int) -> list[Candle]:
        """Rebuilds a seeded series up to ``floor_ms`` from stored closed candles of a finer interval that tiles
        it (oldest first); trades before ``floor_ms`` are then skipped during the replay. Returns the candles of
        this series that this closes (lost in a crash)."""
        series = self._one_series(symbol, interval)
        if series is None:
            raise ValueError(f"interval {interval!r} is not configured")
        if series.current is None:  # never closed a candle: it starts where the finer history starts
            if not finer:
                return []
            first = finer[0]
            open_time = series.interval.open_time(first.open_time_ms)
            series.current = _Bar(open_time, series.interval.close_time(open_time), first.open)
        out: list[Candle] = []
        with decimal.localcontext(EXACT):
            for part in finer:
                bar = series.current
                assert bar is not None
                if part.open_time_ms > bar.close_time_ms:
                    before = len(out)
                    self.counters.empty_candles_skipped += series.roll_to(
                        series.interval.open_time(part.open_time_ms), out)
                    self._count_closed(out, before)
                    bar = series.current
                    assert bar is not None
                bar.merge(part)
        series.replay_floor_ms = floor_ms
        current = series.current
        if self.seed_edges and current is not None and not current.complete:
            # Rebuilt from a finer candle that was incomplete: the kline, asked for after the replay, holds
            # every trade so far (the streamed ones after it are kept while it is fetched).
            self._await_seed(series, current.open_time_ms)
        return out

    def end_replay(self) -> None:
        for all_series in self._series.values():
            for series in all_series:
                series.replay_floor_ms = None


def tiles(finer: Interval, coarser: Interval) -> bool:
    """True when every open time of ``coarser`` is an open time of ``finer`` (and ``finer`` is shorter)."""
    if finer.name in ("1w", "1M") or finer.nominal_ms >= coarser.nominal_ms:
        return False
    if coarser.name in ("1w", "1M"):  # Mondays and month starts are day boundaries
        return DAY_MS % finer.nominal_ms == 0
    return coarser.nominal_ms % finer.nominal_ms == 0


def revise_candle(candle: Candle, ticks: Sequence[Tick]) -> Candle | None:
    """``candle`` with the trades of ``ticks`` it does not hold yet, as its next revision (None: it held them
    all). For a stored candle that a late trade reaches after it left memory."""
    bar = _Bar.from_candle(candle)
    added = 0
    with decimal.localcontext(EXACT):
        for tick in ticks:
            if _complete(bar.trade_count, bar.first_trade_id, bar.last_trade_id, tick.trade_id):
                continue  # held already (trade ids are consecutive: a candle without holes holds its range)
            bar.add(tick, tick.price * tick.quantity)
            added += 1
    if not added:
        return None
    return bar.candle(candle.symbol, candle.interval, closed=True, revision=candle.revision + 1)


def _holds(candle: Candle, trade_id: int) -> bool:
    """True when ``candle`` has no missing trade id and ``trade_id`` is one of its trades."""
    return _complete(candle.trade_count, candle.first_trade_id, candle.last_trade_id, trade_id)


def _complete(trade_count: int, first: int, last: int, trade_id: int) -> bool:
    # Binance's trade ids are consecutive per symbol: a candle without holes has last - first + 1 trades.
    return trade_count > 0 and first <= trade_id <= last and trade_count == last - first + 1


def _find(ring: ClosedRing, open_time_ms: int) -> int | None:
    """Index of the candle opening at ``open_time_ms``, searching from the newest (late trades are recent)."""
    for index in range(len(ring) - 1, -1, -1):
        candle_open = ring.open_time_at(index)
        if candle_open == open_time_ms:
            return index
        if candle_open < open_time_ms:
            return None
    return None


def merge_closed(candles: Sequence[Candle]) -> list[Candle]:
    """Keeps the latest revision per (symbol, interval, open time), in first-seen order (for readers of a
    stream of closed candles and revisions)."""
    latest: dict[tuple[str, str, int], Candle] = {}
    for candle in candles:
        key = (candle.symbol, candle.interval, candle.open_time_ms)
        if key not in latest or candle.revision >= latest[key].revision:
            latest[key] = candle
    return list(latest.values())

