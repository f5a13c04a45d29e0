"""Time is the exchange's: trade times that go backwards while ids go up, and a local clock 10 minutes off.

The simulator on loopback, the real ingest and the real aggregator, under a MockClock that drives both the
exchange's clock (the trade times published) and ours (the exchange's plus a skew). Candles follow trade time
(Binance's rule: a trade belongs to the kline of its trade time, whatever came before it); closing by the clock
follows the exchange's clock, not ours; ingest stays healthy.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from decimal import Decimal
from functools import partial

import attrs
import httpx
import pytest
import trio
import trio.testing

from app.ingest.status import IngestStatus
from app.ingest.subscriptions import SubscriptionManager
from app.ingest.trades import stream_trades
from app.intervals import Interval
from app.model import Candle, Tick
from app.replay.simulator import Simulator
from app.settings import Settings
from app.store.aggregator import CLOSE_GRACE_MS, CandleFeed, aggregate

MINUTE = 60_000
M0 = 1_723_161_300_000  # 2024-08-08 23:55:00 UTC, a minute boundary: the exchange's clock at trio time 0
TEN_MINUTES = 600_000


def exchange_ms() -> int:
    return M0 + round(trio.current_time() * 1000)


def trade(trade_id: int, time_ms: int, price: str) -> Tick:
    # Event time: when the exchange sent it (now), which may be later than the trade time.
    return Tick("BTCUSDT", Decimal(price), Decimal("0.5"), time_ms, max(time_ms, exchange_ms()), trade_id,
                trade_id % 2 == 0)


@attrs.define
class Pipeline:
    status: IngestStatus
    feed: CandleFeed
    # (trio time, candle) for every closed candle and revision the aggregator sent.
    closed: list[tuple[float, Candle]] = attrs.Factory(list)
    _changed: trio.Event = attrs.Factory(trio.Event)

    async def wait_closed(self, count: int) -> None:
        while len(self.closed) < count:
            await self._changed.wait()

    def note(self, candles: Sequence[Candle]) -> None:
        self.closed.extend((trio.current_time(), candle) for candle in candles)
        self._changed.set()
        self._changed = trio.Event()

    def final(self) -> dict[int, Candle]:
        """The latest revision of each closed candle, by open time."""
        latest: dict[int, Candle] = {}
        for _, candle in self.closed:
            latest[candle.open_time_ms] = candle
        return latest


@asynccontextmanager
async def ingest_to_candles(simulator: Simulator, local_skew_ms: int) -> AsyncIterator[Pipeline]:
    """stream_trades -> aggregate, with our wall clock ``local_skew_ms`` off the exchange's."""
    settings = Settings(symbols=("BTCUSDT",), binance_ws_url=simulator.ws_url, binance_rest_url=simulator.rest_url,
                        candle_intervals=(Interval("1m"),), stale_after_seconds=3600)
    status = IngestStatus()
    pipeline = Pipeline(status, CandleFeed(settings.candle_intervals))
    ticks_send, ticks_receive = trio.open_memory_channel[list[Tick]](64)
    closed_send, closed_receive = trio.open_memory_channel[Sequence[Candle]](64)

    async def collect() -> None:
        async for candles in closed_receive:
            pipeline.note(candles)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(collect)
        nursery.start_soon(partial(aggregate, ticks_receive, closed_send, pipeline.feed, is_live=status.is_live,
                                   clock_ms=lambda: exchange_ms() + local_skew_ms))
        await nursery.start(stream_trades, settings, SubscriptionManager(settings.symbols, status), ticks_send)
        await simulator.wait_subscribed("btcusdt@trade")
        yield pipeline
        nursery.cancel_scope.cancel()


def kline(candle: Candle) -> tuple[object, ...]:
    return (candle.open_time_ms, candle.open, candle.high, candle.low, candle.close, candle.volume,
            candle.trade_count, candle.first_trade_id, candle.last_trade_id)


async def simulator_klines(simulator: Simulator, start_ms: int, end_ms: int) -> list[tuple[object, ...]]:
    async with httpx.AsyncClient(base_url=simulator.rest_url) as client:
        response = await client.get("/api/v3/klines", params={
            "symbol": "BTCUSDT", "interval": "1m", "startTime": start_ms, "endTime": end_ms})
    return [(row[0], Decimal(row[1]), Decimal(row[2]), Decimal(row[3]), Decimal(row[4]), Decimal(row[5]), row[8])
            for row in response.json()]


@pytest.mark.parametrize("local_skew_ms", [-TEN_MINUTES, 0, TEN_MINUTES])
async def test_candles_follow_trade_time_and_close_by_the_exchanges_clock(
    local_skew_ms: int, autojump_clock: trio.testing.MockClock, simulator: Simulator
) -> None:
    with trio.fail_after(600):
        async with ingest_to_candles(simulator, local_skew_ms) as pipeline:
            await trio.sleep(10)
            simulator.publish([trade(1, M0 + 10_000, "100"), trade(2, M0 + 10_000, "101")])
            await trio.sleep(20)
            # Ids go up, times go back: trade 4 is stamped before trade 3, within the same minute.
            simulator.publish([trade(3, M0 + 30_000, "99"), trade(4, M0 + 25_000, "98")])
            await trio.sleep(30.5)
            # Across the minute: trade 5 is in minute 1, trade 6 (a higher id) back in minute 0.
            simulator.publish([trade(5, M0 + MINUTE + 400, "103"), trade(6, M0 + MINUTE - 300, "97")])
            await pipeline.wait_closed(2)
            # Minute 0 closed when trade 5 opened minute 1, then was revised by trade 6 (still minute 0).
            (_, first), (_, revised) = pipeline.closed
            assert (first.open_time_ms, first.trade_count, first.revision) == (M0, 4, 0)
            assert (revised.open_time_ms, revised.trade_count, revised.revision) == (M0, 5, 1)
            assert revised.low == Decimal("97") and revised.close == Decimal("97")  # the last trade by id
            # Minute 1 closes by the clock: when the exchange's clock (not ours) passes its close + the grace.
            await pipeline.wait_closed(3)
            closed_at, minute_1 = pipeline.closed[2]
            assert minute_1.open_time_ms == M0 + MINUTE and minute_1.trade_count == 1
            assert M0 + round(closed_at * 1000) == M0 + 2 * MINUTE - 1 + CLOSE_GRACE_MS
            # A late trade stamped in minute 1 after it closed: minute 1 is revised, as Binance's kline has it.
            simulator.publish([trade(7, M0 + 2 * MINUTE - 5_000, "104")])
            while (minute_1 := pipeline.final()[M0 + MINUTE]).revision == 0:
                await pipeline.wait_closed(len(pipeline.closed) + 1)
            assert minute_1.trade_count == 2 and minute_1.high == Decimal("104")
            # Ingest stayed healthy throughout: no reconnect, no gap, nothing backfilled, the feed live.
            connection = pipeline.status.connections["shard-0"]
            assert connection.connected and connection.reconnects == 0
            btc = pipeline.status.symbols["BTCUSDT"]
            assert btc.unrepaired_gaps == [] and not btc.backfilling and btc.ticks_emitted == 7
            assert pipeline.status.is_live("BTCUSDT")
            mine = [kline(pipeline.final()[open_ms])[:7] for open_ms in (M0, M0 + MINUTE)]
            assert mine == await simulator_klines(simulator, M0, M0 + 2 * MINUTE - 1)
