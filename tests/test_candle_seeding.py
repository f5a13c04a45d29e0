"""The candle builder at the edges (issue 17): seeding the first candle from a kline, incomplete candles, no
empty candles made up across a jump in trade ids, late trades revising stored candles, Binance's paging."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from decimal import Decimal
from pathlib import Path

import attrs
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from app.backoff import Backoff, BackoffPolicy
from app.convert import candles_from_bus, candles_to_bus
from app.intervals import Interval
from app.model import Candle, CandleSeed, Tick
from app.store.aggregator import CandleFeed, aggregate
from app.store.candle_query import query_candles
from app.store.candles import CandleBuilder, LateTrade
from app.store.persist import PersistStatus, persist_late_trades
from app.store.sqlite import SQLiteStorage

BASE_MS = 1_723_161_300_000  # 2024-08-08 23:55:00 UTC, a minute boundary
MINUTE = 60_000
ONE_MINUTE = Interval("1m")


def trade(time_ms: int, trade_id: int, price: str = "10", quantity: str = "1", maker: bool = False) -> Tick:
    return Tick("BTCUSDT", Decimal(price), Decimal(quantity), time_ms, time_ms, trade_id, maker)


def reference_candles(trades: Sequence[Tick], interval: str = "1m") -> list[Candle]:
    """Every candle of ``trades`` built by a builder that saw them all (closed ones, then the open one)."""
    builder = CandleBuilder([Interval(interval)])
    closed = builder.update_many(trades)
    current = builder.open_candle("BTCUSDT", interval)
    assert current is not None
    return [*closed, current]


def kline_of(trades: Sequence[Tick], open_time_ms: int, interval: str = "1m") -> Candle:
    """Binance's kline of the interval at ``open_time_ms`` holding ``trades`` (with its first trade id, as the
    seeder gives it)."""
    builder = CandleBuilder([Interval(interval)])
    builder.update_many([tick for tick in trades if Interval(interval).open_time(tick.trade_time_ms) == open_time_ms])
    candle = builder.open_candle("BTCUSDT", interval)
    assert candle is not None and candle.open_time_ms == open_time_ms
    return candle


def same_values(candle: Candle) -> Candle:
    """A candle without its version fields (revision, closed, complete)."""
    return attrs.evolve(candle, revision=0, closed=True, complete=True)


@st.composite
def market(draw: st.DrawFn) -> list[Tick]:
    """Trades with consecutive ids over a few minutes, at random times and prices (quiet minutes included)."""
    count = draw(st.integers(min_value=2, max_value=60))
    gaps = draw(st.lists(st.integers(min_value=0, max_value=40_000), min_size=count, max_size=count))
    prices = draw(st.lists(st.sampled_from(["9.5", "10", "10.25", "11"]), min_size=count, max_size=count))
    makers = draw(st.lists(st.booleans(), min_size=count, max_size=count))
    trades, time_ms = [], BASE_MS
    for index in range(count):
        time_ms += gaps[index]
        trades.append(trade(time_ms, 1000 + index, prices[index], "0.5", makers[index]))
    return trades


@settings(max_examples=300, deadline=None)
@given(trades=market(), data=st.data())
def test_a_seeded_first_candle_equals_the_one_built_from_every_trade(trades: list[Tick], data: st.DataObject) -> None:
    # Streaming starts at trade ``cut``; REST's kline is fetched after ``streamed`` trades arrived and holds the
    # interval's trades up to ``rest_seen`` (at least the first streamed one: it is asked for after it).
    cut = data.draw(st.integers(min_value=1, max_value=len(trades) - 1))
    streamed = data.draw(st.integers(min_value=1, max_value=len(trades) - cut))
    rest_seen = data.draw(st.integers(min_value=cut, max_value=len(trades) - 1))
    builder = CandleBuilder([ONE_MINUTE], seed_edges=True)
    served = builder.update_many(trades[cut:cut + streamed])
    (request,) = builder.take_seed_requests()
    first_open = ONE_MINUTE.open_time(trades[cut].trade_time_ms)
    assert request.open_time_ms == first_open
    kline = kline_of(trades[:rest_seen + 1], first_open)
    served += builder.apply_seed(CandleSeed("BTCUSDT", "1m", first_open, kline))
    served += builder.update_many(trades[cut + streamed:])
    current = builder.open_candle("BTCUSDT", "1m")
    assert current is not None
    latest = {candle.open_time_ms: candle for candle in [*served, current]}
    expected = [candle for candle in reference_candles(trades) if candle.open_time_ms >= first_open]
    assert [same_values(latest[candle.open_time_ms]) for candle in expected] == [
        same_values(candle) for candle in expected]
    assert all(candle.complete for candle in latest.values())
    assert builder.counters.candles_incomplete == 0


def test_the_first_candle_is_marked_incomplete_until_its_seed_and_for_good_when_the_seed_fails() -> None:
    builder = CandleBuilder([ONE_MINUTE], seed_edges=True)
    builder.update(trade(BASE_MS + 30_000, 50))
    current = builder.open_candle("BTCUSDT", "1m")
    assert current is not None and not current.complete
    (request,) = builder.take_seed_requests()
    (closed,) = builder.update(trade(BASE_MS + MINUTE + 1, 51))
    assert not closed.complete and closed.revision == 0
    assert builder.apply_seed(CandleSeed("BTCUSDT", "1m", request.open_time_ms, None, "HTTP 418")) == []
    assert builder.counters.candles_incomplete == 1
    later = builder.open_candle("BTCUSDT", "1m")
    assert later is not None and later.complete  # its first trade follows the last one seen: nothing missing
    assert builder.take_seed_requests() == []


def test_a_seed_that_arrives_after_its_candle_closed_revises_it_complete() -> None:
    history = [trade(BASE_MS + 1_000, 48, "9"), trade(BASE_MS + 2_000, 49, "12")]
    builder = CandleBuilder([ONE_MINUTE], seed_edges=True)
    builder.update(trade(BASE_MS + 30_000, 50))
    (closed,) = builder.update(trade(BASE_MS + MINUTE + 1, 51))
    (request,) = builder.take_seed_requests()
    kline = kline_of([*history, trade(BASE_MS + 30_000, 50)], BASE_MS)
    (revised,) = builder.apply_seed(CandleSeed("BTCUSDT", "1m", request.open_time_ms, kline))
    assert revised.revision == closed.revision + 1 and revised.complete
    assert (revised.open, revised.high, revised.low, revised.trade_count) == (Decimal(9), Decimal(12), Decimal(9), 3)
    assert builder.recent_closed("BTCUSDT", "1m", None, None, 10) == [revised]


def test_a_kline_that_ends_before_the_streamed_trades_leaves_the_candle_incomplete() -> None:
    builder = CandleBuilder([ONE_MINUTE], seed_edges=True)
    builder.update(trade(BASE_MS + 30_000, 50))
    (request,) = builder.take_seed_requests()
    stale = kline_of([trade(BASE_MS + 1_000, 47)], BASE_MS)  # trades 48 and 49 are in neither
    builder.apply_seed(CandleSeed("BTCUSDT", "1m", request.open_time_ms, stale))
    current = builder.open_candle("BTCUSDT", "1m")
    assert current is not None and not current.complete
    assert builder.counters.candles_incomplete == 1


def test_no_empty_candle_is_made_up_across_a_jump_in_trade_ids() -> None:
    builder = CandleBuilder([ONE_MINUTE], seed_edges=True)
    builder.update(trade(BASE_MS + 1_000, 10))
    builder.take_seed_requests()
    # Consecutive ids prove the minutes in between had no trade: Binance's empty klines.
    closed = builder.update(trade(BASE_MS + 3 * MINUTE, 11))
    assert [candle.trade_count for candle in closed] == [1, 0, 0]
    assert builder.take_seed_requests() == []
    # A jump (the service was down, trades missed): nothing is invented for the hour it did not see, and the
    # candle it resumes in is asked for.
    closed = builder.update(trade(BASE_MS + 63 * MINUTE + 5, 500))
    assert [candle.open_time_ms for candle in closed] == [BASE_MS + 3 * MINUTE]
    (request,) = builder.take_seed_requests()
    assert request.open_time_ms == BASE_MS + 63 * MINUTE


def test_after_a_restart_a_stored_incomplete_candle_is_asked_for_again_and_completed() -> None:
    history = [trade(BASE_MS + 1_000, 48, "9"), trade(BASE_MS + 2_000, 49, "12"), trade(BASE_MS + 30_000, 50)]
    stored = attrs.evolve(kline_of(history[2:], BASE_MS), closed=True, complete=False)
    builder = CandleBuilder([ONE_MINUTE], seed_edges=True)
    builder.seed("BTCUSDT", "1m", [stored])
    (request,) = builder.take_seed_requests()
    assert request.open_time_ms == BASE_MS
    builder.end_replay()
    assert builder.update(trade(BASE_MS + MINUTE + 5, 51)) == []  # follows the stored candle: no new seed
    assert builder.take_seed_requests() == []
    (revised,) = builder.apply_seed(CandleSeed("BTCUSDT", "1m", BASE_MS, kline_of(history, BASE_MS)))
    assert revised.complete and revised.revision == 1 and revised.trade_count == 3 and revised.open == 9


def test_an_incomplete_candle_crosses_the_bus_as_it_is() -> None:
    candle = attrs.evolve(kline_of([trade(BASE_MS, 1)], BASE_MS), complete=False, revision=2)
    assert candles_from_bus(candles_to_bus([candle])) == [candle]


# --- stored candles: revisions by late trades, paging ---------------------------------------------------------


@pytest.fixture
async def storage(tmp_path: Path) -> AsyncIterator[SQLiteStorage]:
    opened = await SQLiteStorage.open(str(tmp_path / "db.sqlite3"))
    yield opened
    await opened.close()


async def test_a_late_trade_older_than_the_ring_revises_the_stored_candle(storage: SQLiteStorage) -> None:
    # The real clock: SQLite runs in threads, which a MockClock's autojump does not wait for (nothing here
    # sleeps, and no candle closes by the clock: the feed is never live).
    feed = CandleFeed([ONE_MINUTE], recent_limit=2)
    ticks_send, ticks_receive = trio.open_memory_channel[Sequence[Tick]](16)
    closed_send, closed_receive = trio.open_memory_channel[Sequence[Candle]](16)
    late_send, late_receive = trio.open_memory_channel[Sequence[LateTrade]](16)
    status = PersistStatus()
    # Trade 2 of the first minute is missing (a gap repaired much later); five minutes follow.
    trades = [trade(BASE_MS + 1_000, 1, "10"), trade(BASE_MS + 3_000, 3, "10")] + [
        trade(BASE_MS + minute * MINUTE + 1_000, 3 + minute) for minute in range(1, 6)]
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: aggregate(ticks_receive, closed_send, feed, is_live=lambda symbol: False,
                                                 late_trades=late_send))
            nursery.start_soon(persist_late_trades, late_receive, storage, status,
                               Backoff(BackoffPolicy(start=0.01, cap=0.1)))
            await ticks_send.send(trades)
            closed: list[Candle] = []
            while len(closed) < 5:
                closed += await closed_receive.receive()
            await storage.write_candles(closed)
            assert feed.oldest_recent_open_ms("BTCUSDT", "1m") == BASE_MS + 3 * MINUTE  # minute 0 left memory
            await ticks_send.send([trade(BASE_MS + 2_000, 2, "13")])
            await ticks_send.aclose()  # the aggregator ends, and with it the late-trade writer
    assert status.stored_candle_revisions == 1
    assert feed.counters.late_trades_unrevisable == 1
    (stored,) = await storage.candles("BTCUSDT", "1m", BASE_MS, BASE_MS, 1)
    assert (stored.revision, stored.trade_count, stored.high, stored.first_trade_id, stored.last_trade_id) == (
        1, 3, Decimal(13), 1, 3)
    served = await query_candles(feed, storage, "BTCUSDT", ONE_MINUTE, start_ms=BASE_MS, limit=1)
    assert served == [stored]


async def test_pages_of_candles_cross_a_hole_as_binances_do(storage: SQLiteStorage) -> None:
    def candle(open_ms: int) -> Candle:
        return attrs.evolve(kline_of([trade(open_ms, open_ms // MINUTE)], open_ms), closed=True)

    # History from 05:00 to 05:59 and 07:00 to 07:59: the service was down for an hour.
    five = BASE_MS - BASE_MS % (24 * 3_600_000) + 5 * 3_600_000
    opens = [five + minute * MINUTE for minute in (*range(60), *range(120, 180))]
    await storage.write_candles([candle(open_ms) for open_ms in opens])
    feed = CandleFeed([ONE_MINUTE])

    async def page(start_ms: int, limit: int, end_ms: int | None = None) -> list[int]:
        candles = await query_candles(feed, storage, "BTCUSDT", ONE_MINUTE, start_ms=start_ms, end_ms=end_ms,
                                      limit=limit)
        return [candle.open_time_ms for candle in candles]

    # The first ``limit`` that exist at or after start, skipping the hole (ccxt issue 8068's example).
    assert await page(five + 57 * MINUTE, 6) == [five + minute * MINUTE for minute in (57, 58, 59, 120, 121, 122)]
    assert await page(five + 57 * MINUTE, 6, end_ms=five + 121 * MINUTE) == [
        five + minute * MINUTE for minute in (57, 58, 59, 120, 121)]
    # From midnight with limit 1000: every candle at once, though the history starts at 05:00.
    assert await page(five - 5 * 3_600_000, 1000) == opens
    # The usual client loop ("a short page means done") pages through the whole history.
    collected: list[int] = []
    start = five - 5 * 3_600_000
    while True:
        got = await page(start, 25)
        collected += got
        if len(got) < 25:
            break
        start = got[-1] + MINUTE
    assert collected == opens
