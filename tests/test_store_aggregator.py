"""The aggregate task: closing by the (mock) clock only while the feed is live, candle updates, revisions."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from decimal import Decimal
from functools import partial

import pytest
import trio
import trio.testing

from app.intervals import Interval
from app.model import Candle, Tick
from app.store.aggregator import CLOSE_GRACE_MS, YIELD_TO_FEED_ROUNDS, CandleFeed, aggregate
from app.store.latest import OverflowPolicy

BASE_MS = 1_723_161_300_000  # 2024-08-08 23:55:00 UTC, a minute boundary
MINUTE = 60_000


def clock_ms() -> int:
    """Wall time driven by trio's clock (the MockClock in these tests): BASE_MS at trio time 0."""
    return BASE_MS + round(trio.current_time() * 1000)


def tick(time_ms: int, trade_id: int, price: str = "10") -> Tick:
    return Tick("BTCUSDT", Decimal(price), Decimal("1"), time_ms, time_ms, trade_id, False)


class Pipeline:
    def __init__(self, feed: CandleFeed) -> None:
        self.feed = feed
        self.ticks_send, self.ticks_receive = trio.open_memory_channel[Sequence[Tick]](16)
        self.closed_send, self.closed_receive = trio.open_memory_channel[Sequence[Candle]](16)
        self.live = {"BTCUSDT": True}
        self.stopped: set[str] = set()

    def start(self, nursery: trio.Nursery, is_live: Callable[[str], bool] | None = None) -> None:
        nursery.start_soon(partial(aggregate, self.ticks_receive, self.closed_send, self.feed,
                                   is_live=is_live or (lambda symbol: self.live.get(symbol, False)),
                                   is_stopped=lambda symbol: symbol in self.stopped, clock_ms=clock_ms))

    def closed_so_far(self) -> list[Candle]:
        candles: list[Candle] = []
        while True:
            try:
                candles.extend(self.closed_receive.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                return candles


@pytest.fixture
def pipeline() -> Pipeline:
    return Pipeline(CandleFeed([Interval("1m")]))


async def test_the_clock_closes_a_candle_its_grace_after_its_close_time(
    pipeline: Pipeline, autojump_clock: trio.testing.MockClock
) -> None:
    async with trio.open_nursery() as nursery:
        pipeline.start(nursery)
        await pipeline.ticks_send.send([tick(BASE_MS + 5_000, 1)])
        (batch,) = [await pipeline.closed_receive.receive()]
        assert [c.open_time_ms for c in batch] == [BASE_MS] and batch[0].trade_count == 1
        # Closed exactly when the exchange's clock passed close time + grace; the exchange's clock is the local
        # one plus the offset seen on the last trade (its event time was 5 s ahead of the local clock here).
        assert clock_ms() + 5_000 == BASE_MS + MINUTE - 1 + CLOSE_GRACE_MS
        current = pipeline.feed.open_candle("BTCUSDT", "1m")
        assert current is not None and current.trade_count == 0 and current.open_time_ms == BASE_MS + MINUTE
        # An empty minute is closed the same way, a minute later.
        (empty,) = await pipeline.closed_receive.receive()
        assert empty.trade_count == 0 and empty.first_trade_id == -1 and empty.close == 10
        nursery.cancel_scope.cancel()


async def test_no_candle_closes_by_the_clock_while_the_feed_is_not_live(
    pipeline: Pipeline, autojump_clock: trio.testing.MockClock
) -> None:
    pipeline.live["BTCUSDT"] = False  # e.g. backfilling after a reconnect
    async with trio.open_nursery() as nursery:
        pipeline.start(nursery)
        await pipeline.ticks_send.send([tick(BASE_MS + 5_000, 1)])
        await trio.sleep(10 * 60)
        assert pipeline.closed_so_far() == []
        # The backfilled trades arrive in order and close candles themselves: no revision needed.
        await pipeline.ticks_send.send([tick(BASE_MS + 30_000, 2), tick(BASE_MS + MINUTE + 1, 3)])
        (batch,) = [await pipeline.closed_receive.receive()]
        assert [(c.trade_count, c.revision) for c in batch] == [(2, 0)]
        pipeline.live["BTCUSDT"] = True
        # Live again: the clock catches up with the minutes that passed (the open one and 8 empty ones); the
        # backfilled trades' old event times do not hold the exchange's clock back.
        await trio.sleep(1.5)
        assert len(pipeline.closed_so_far()) == 9
        nursery.cancel_scope.cancel()


async def test_a_stopped_symbols_open_candle_closes_on_time_and_no_empty_one_follows(
    pipeline: Pipeline, autojump_clock: trio.testing.MockClock
) -> None:
    pipeline.live["BTCUSDT"] = False  # e.g. the connection is down: a stopped symbol's trades are all in anyway
    async with trio.open_nursery() as nursery:
        pipeline.start(nursery)
        await pipeline.ticks_send.send([tick(BASE_MS + 5_000, 1)])
        pipeline.stopped.add("BTCUSDT")  # BREAK or delisted
        (batch,) = [await pipeline.closed_receive.receive()]
        assert [(c.open_time_ms, c.trade_count) for c in batch] == [(BASE_MS, 1)]
        assert clock_ms() + 5_000 == BASE_MS + MINUTE - 1 + CLOSE_GRACE_MS
        assert pipeline.feed.open_candle("BTCUSDT", "1m") is None
        await trio.sleep(10 * 60)
        assert pipeline.closed_so_far() == []  # no empty minutes while it is stopped
        nursery.cancel_scope.cancel()


async def test_candle_subscribers_get_closed_candles_revisions_and_coalesced_open_updates(
    pipeline: Pipeline, autojump_clock: trio.testing.MockClock
) -> None:
    _, updates = pipeline.feed.subscribe_candles("ws:1", 16, OverflowPolicy.CUT_OFF, frozenset({"BTCUSDT"}), "1m")
    _, other_symbol = pipeline.feed.subscribe_candles("ws:2", 16, OverflowPolicy.CUT_OFF, frozenset({"ETHUSDT"}), "1m")
    pipeline.live["BTCUSDT"] = False
    async with trio.open_nursery() as nursery:
        pipeline.start(nursery)
        await pipeline.ticks_send.send([tick(BASE_MS + 1, 1, "10"), tick(BASE_MS + 2, 2, "11"), tick(BASE_MS + 3, 3)])
        (open_update,) = await updates.receive()  # one update for three trades
        assert (open_update.closed, open_update.trade_count, open_update.high) == (False, 3, 11)
        await pipeline.ticks_send.send([tick(BASE_MS + MINUTE + 5, 6)])
        closed, reopened = await updates.receive()
        assert (closed.closed, closed.trade_count, reopened.closed, reopened.trade_count) == (True, 3, False, 1)
        # A repaired gap: trades 4 and 5 belonged to the closed minute.
        await pipeline.ticks_send.send([tick(BASE_MS + 40_000, 4, "12"), tick(BASE_MS + 41_000, 5, "9")])
        revision_1, revision_2, still_open = await updates.receive()
        assert (revision_1.revision, revision_2.revision, revision_2.trade_count) == (1, 2, 5)
        assert (revision_2.high, revision_2.low, revision_2.closed, still_open.closed) == (12, 9, True, False)
        persisted = pipeline.closed_so_far()
        assert [c.revision for c in persisted] == [0, 1, 2]
        assert pipeline.feed.revisions == 2
        with pytest.raises(trio.WouldBlock):
            other_symbol.receive_nowait()
        nursery.cancel_scope.cancel()


async def test_the_end_of_the_ticks_ends_every_candle_channel(pipeline: Pipeline) -> None:
    _, updates = pipeline.feed.subscribe_candles("ws:1", 4, OverflowPolicy.CUT_OFF, None, "1m")
    async with trio.open_nursery() as nursery:
        pipeline.start(nursery)
        await pipeline.ticks_send.aclose()
    with pytest.raises(trio.EndOfChannel):
        await pipeline.closed_receive.receive()
    with pytest.raises(trio.EndOfChannel):
        await updates.receive()


def test_subscribing_to_an_interval_that_is_not_configured_is_refused(pipeline: Pipeline) -> None:
    with pytest.raises(ValueError, match="not configured"):
        pipeline.feed.subscribe_candles("ws:1", 4, OverflowPolicy.CUT_OFF, None, "5m")


async def test_a_backlog_is_worked_off_in_rounds_of_bounded_ticks(pipeline: Pipeline) -> None:
    # A round is one step of the task: four waiting batches of 10,000 ticks (big socket reads) take two rounds,
    # each ending with an update to candle subscribers, instead of one long step holding up every other task.
    _, updates = pipeline.feed.subscribe_candles("ws:1", 16, OverflowPolicy.CUT_OFF, None, "1m")
    for batch in range(4):
        pipeline.ticks_send.send_nowait([tick(BASE_MS + 1, batch * 10_000 + n + 1) for n in range(10_000)])
    async with trio.open_nursery() as nursery:
        pipeline.start(nursery)
        await pipeline.ticks_send.aclose()
    rounds = [batch async for batch in updates]
    assert len(rounds) == 2
    assert rounds[-1][-1].last_trade_id == 40_000
async def test_an_idle_aggregator_lets_the_feed_send_a_fresh_batch_first(
    pipeline: Pipeline, autojump_clock: trio.testing.MockClock
) -> None:
    # The /ws feed gets the same batch from the fan-out and needs YIELD_TO_FEED_ROUNDS more scheduler rounds to
    # put it on the wire; an idle aggregator waits those out before its candle work.
    async with trio.open_nursery() as nursery:
        pipeline.start(nursery)
        await pipeline.ticks_send.send([tick(BASE_MS + 5_000, 1)])
        await trio.testing.wait_all_tasks_blocked()
        assert pipeline.feed.open_candle("BTCUSDT", "1m") is not None  # the first trade, to have a candle
        pipeline.ticks_send.send_nowait([tick(BASE_MS + 6_000, 2)])
        for _ in range(YIELD_TO_FEED_ROUNDS):
            await trio.lowlevel.checkpoint()
            current = pipeline.feed.open_candle("BTCUSDT", "1m")
            assert current is not None and current.trade_count == 1
        await trio.testing.wait_all_tasks_blocked()
        current = pipeline.feed.open_candle("BTCUSDT", "1m")
        assert current is not None and current.trade_count == 2
        nursery.cancel_scope.cancel()
