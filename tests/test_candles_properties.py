"""The candle builder against a ten-line reference, over random trade sequences and every interval."""

from __future__ import annotations

import decimal
from collections import defaultdict
from collections.abc import Sequence
from decimal import Decimal

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st

from app.intervals import INTERVAL_NAMES, Interval
from app.model import Candle, Tick
from app.store.candles import CandleBuilder, merge_closed

SYMBOLS = ("AAAUSDT", "BBBBTC")


def reference(ticks: Sequence[Tick], interval: Interval, until_open_ms: int | None = None) -> list[Candle]:
    """Every candle of one symbol from its first trade's interval on; empty ones repeat the previous close."""
    with decimal.localcontext(prec=200):
        by_open: dict[int, list[Tick]] = defaultdict(list)
        for tick in ticks:
            by_open[interval.open_time(tick.trade_time_ms)].append(tick)
        open_ms, last_ms = min(by_open), max(max(by_open), until_open_ms or 0)
        candles: list[Candle] = []
        while open_ms <= last_ms:
            trades = sorted(by_open.get(open_ms, []), key=lambda tick: tick.trade_id)
            close = trades[-1].price if trades else candles[-1].close
            buys = [t for t in trades if not t.is_buyer_maker]
            candles.append(Candle(
                trades[0].symbol if trades else candles[-1].symbol, interval.name, open_ms,
                interval.close_time(open_ms), trades[0].price if trades else close,
                max((t.price for t in trades), default=close), min((t.price for t in trades), default=close),
                close, sum((t.quantity for t in trades), Decimal(0)),
                sum((t.price * t.quantity for t in trades), Decimal(0)), len(trades),
                sum((t.quantity for t in buys), Decimal(0)), sum((t.price * t.quantity for t in buys), Decimal(0)),
                trades[0].trade_id if trades else -1, trades[-1].trade_id if trades else -1, closed=True))
            open_ms = interval.next_open_time(open_ms)
        candles[-1] = attrs.evolve(candles[-1], closed=False)
        return candles


def decimals(max_units: int) -> st.SearchStrategy[Decimal]:
    """Binance-like 8-decimal values."""
    return st.integers(1, max_units).map(lambda units: Decimal(units).scaleb(-8))


@st.composite
def trade_sequences(draw: st.DrawFn, names: Sequence[str] = INTERVAL_NAMES) -> tuple[Interval, list[Tick]]:
    """Trades of two symbols in trade-id order, times non-decreasing, clustered around interval boundaries."""
    interval = Interval(draw(st.sampled_from(names)))
    # 2017 .. 2033, so 1M crosses year ends and leap Februaries.
    start = interval.open_time(draw(st.integers(1_500_000_000_000, 2_000_000_000_000)))
    time_ms = start + draw(st.sampled_from([-1, 0, 1]))
    ticks: list[Tick] = []
    next_id = dict.fromkeys(SYMBOLS, draw(st.integers(0, 10**9)))
    for _ in range(draw(st.integers(1, 40))):
        step = draw(st.sampled_from(["same", "small", "boundary", "skip"]))
        if step == "small":
            time_ms += draw(st.integers(0, max(1, interval.nominal_ms // 3)))
        elif step == "boundary":  # just before, at, or just after the next open time
            time_ms = interval.next_open_time(interval.open_time(time_ms)) + draw(st.sampled_from([-1, 0, 1]))
        elif step == "skip":  # leave one to three intervals empty
            time_ms += draw(st.integers(1, 3)) * interval.nominal_ms + draw(st.integers(0, 999))
        symbol = draw(st.sampled_from(SYMBOLS))
        ticks.append(Tick(symbol, draw(decimals(10**13)), draw(decimals(10**12)), time_ms, time_ms,
                          next_id[symbol], draw(st.booleans())))
        next_id[symbol] += 1
    return interval, ticks


def final_view(builder: CandleBuilder, emitted: list[Candle], symbol: str, interval: str) -> list[Candle]:
    """Every candle of a series as a reader of the emitted stream sees it at the end (latest revision)."""
    closed = [candle for candle in merge_closed(emitted) if candle.symbol == symbol]
    open_candle = builder.open_candle(symbol, interval)
    candles = sorted(closed, key=lambda candle: candle.open_time_ms)
    assert open_candle is not None
    return [*candles, open_candle]


def without_revision(candles: list[Candle]) -> list[Candle]:
    return [attrs.evolve(candle, revision=0) for candle in candles]


@settings(max_examples=200)
@given(trade_sequences())
def test_builder_equals_reference_for_in_order_trades(case: tuple[Interval, list[Tick]]) -> None:
    interval, ticks = case
    builder = CandleBuilder([interval])
    emitted = builder.update_many(ticks)
    assert all(candle.closed and candle.revision == 0 for candle in emitted)
    for symbol in {tick.symbol for tick in ticks}:
        mine = [tick for tick in ticks if tick.symbol == symbol]
        assert final_view(builder, emitted, symbol, interval.name) == reference(mine, interval)
    assert builder.counters.late_trades == 0


@settings(max_examples=200)
@given(trade_sequences(), st.data())
def test_late_trades_revise_closed_candles_to_the_reference(
    case: tuple[Interval, list[Tick]], data: st.DataObject
) -> None:
    """A repaired gap: some trades arrive after later ones; the latest revisions equal the reference."""
    interval, ticks = case
    late_flags = data.draw(st.lists(st.booleans(), min_size=len(ticks), max_size=len(ticks)))
    for symbol in SYMBOLS:  # each symbol's first trade starts its series (a gap is found after a trade)
        firsts = [index for index, tick in enumerate(ticks) if tick.symbol == symbol]
        if firsts:
            late_flags[firsts[0]] = False
    delivered = [t for t, late in zip(ticks, late_flags, strict=True) if not late]
    delivered += [t for t, late in zip(ticks, late_flags, strict=True) if late]
    builder = CandleBuilder([interval], recent_limit=100_000)
    emitted = builder.update_many(delivered)
    for symbol in {tick.symbol for tick in ticks}:
        mine = [tick for tick in ticks if tick.symbol == symbol]
        view = final_view(builder, emitted, symbol, interval.name)
        assert without_revision(view) == reference(mine, interval)
    assert builder.counters.late_trades_unrevisable == 0
    # Every revision is emitted with a higher revision number than the version it replaces.
    seen: dict[tuple[str, int], int] = {}
    for candle in emitted:
        key = (candle.symbol, candle.open_time_ms)
        assert candle.revision == (seen[key] + 1 if key in seen else 0)
        seen[key] = candle.revision


@settings(max_examples=200)
@given(trade_sequences(), st.data())
def test_clock_closes_due_candles_and_empty_intervals(case: tuple[Interval, list[Tick]], data: st.DataObject) -> None:
    """The clock (never ahead of the trades it has seen) closes candles; the result is still the reference."""
    interval, ticks = case
    builder = CandleBuilder([interval], recent_limit=100_000)
    emitted: list[Candle] = []
    for index, tick in enumerate(ticks):
        emitted += builder.update(tick)
        upcoming = ticks[index + 1].trade_time_ms if index + 1 < len(ticks) else tick.trade_time_ms
        if data.draw(st.booleans()):
            for symbol in SYMBOLS:
                emitted += builder.close_due(symbol, data.draw(st.integers(tick.trade_time_ms, upcoming)))
    final_ms = ticks[-1].trade_time_ms + data.draw(st.integers(0, 3 * interval.nominal_ms))
    for symbol in SYMBOLS:
        emitted += builder.close_due(symbol, final_ms)
    assert builder.counters.late_trades == 0
    for symbol in {tick.symbol for tick in ticks}:
        mine = [tick for tick in ticks if tick.symbol == symbol]
        view = final_view(builder, emitted, symbol, interval.name)
        assert view == reference(mine, interval, until_open_ms=interval.open_time(final_ms))
        assert view[-1].close_time_ms >= final_ms


@settings(max_examples=50)
@given(trade_sequences(names=("1s", "1m")))  # a 1s series over months would be millions of candles
def test_every_interval_at_once_equals_each_alone(case: tuple[Interval, list[Tick]]) -> None:
    _, ticks = case
    intervals = [Interval(name) for name in INTERVAL_NAMES]
    together = CandleBuilder(intervals)
    emitted = together.update_many(ticks)
    for interval in intervals:
        alone = CandleBuilder([interval])
        alone_emitted = alone.update_many(ticks)
        assert [c for c in emitted if c.interval == interval.name] == alone_emitted
        for symbol in SYMBOLS:
            assert together.open_candle(symbol, interval.name) == alone.open_candle(symbol, interval.name)


@settings(max_examples=100)
@given(trade_sequences(), st.data())
def test_a_successor_revises_candles_the_clock_closed_early_above_every_published_revision(
    case: tuple[Interval, list[Tick]], data: st.DataObject
) -> None:
    """The clock runs ahead of trades still on their way (their candles close early, then are revised), and at
    a random point a new builder takes over from the old one's ``unsettled`` candles, as a new shard leader
    does: each version of a closed candle has a higher revision than every one emitted before it, whichever
    builder emitted it, and the latest versions are still the reference."""
    interval, ticks = case
    handoff = data.draw(st.integers(0, len(ticks)))
    builder = CandleBuilder([interval], recent_limit=100_000)
    emitted: list[Candle] = []
    final_ms = ticks[-1].trade_time_ms
    for index, tick in enumerate(ticks):
        if index == handoff:
            successor = CandleBuilder([interval], recent_limit=100_000)
            for symbol in SYMBOLS:
                for candle in builder.unsettled(symbol, interval.name):
                    successor.continue_candle(candle)
            builder = successor
        emitted += builder.update(tick)
        if data.draw(st.booleans()):
            ahead_ms = tick.trade_time_ms + data.draw(st.integers(0, 2 * interval.nominal_ms))
            final_ms = max(final_ms, ahead_ms)
            for symbol in SYMBOLS:
                emitted += builder.close_due(symbol, ahead_ms)
    for symbol in SYMBOLS:
        emitted += builder.close_due(symbol, final_ms)
    assert builder.counters.late_trades_unrevisable == 0
    highest: dict[tuple[str, int], int] = {}
    for candle in emitted:
        key = (candle.symbol, candle.open_time_ms)
        assert candle.revision > highest.get(key, -1), candle
        highest[key] = candle.revision
    for symbol in {tick.symbol for tick in ticks}:
        mine = [tick for tick in ticks if tick.symbol == symbol]
        view = final_view(builder, emitted, symbol, interval.name)
        assert without_revision(view) == reference(mine, interval, until_open_ms=interval.open_time(final_ms))
