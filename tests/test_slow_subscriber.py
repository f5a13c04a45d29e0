"""A subscriber that stops reading never slows ingestion or the other subscribers, and memory stays bounded."""

from __future__ import annotations

import tracemalloc
from collections.abc import Sequence
from decimal import Decimal
from functools import partial

import trio

from app.intervals import Interval
from app.model import Candle, Tick
from app.store.aggregator import CandleFeed, aggregate
from app.store.latest import OverflowPolicy, TickHub, fan_out

T0 = 1_723_161_300_000
SYMBOLS = ("BTCUSDT", "ETHUSDT")
TICKS = 30_000


def make_tick(number: int) -> Tick:
    # 20 ms apart: 30,000 trades span ten minutes, so 1s and 1m candles keep closing.
    return Tick(SYMBOLS[number % 2], Decimal(60_000 + number % 100), Decimal("0.001"), T0 + number * 20,
                T0 + number * 20, number // 2, number % 3 == 0)


async def test_a_stalled_subscriber_is_cut_off_while_ingestion_and_the_others_go_on() -> None:
    hub = TickHub()
    feed = CandleFeed([Interval("1s"), Interval("1m")])
    ticks_send, ticks_receive = trio.open_memory_channel[list[Tick]](1024)
    closed_send, closed_receive = trio.open_memory_channel[Sequence[Candle]](64)
    _, aggregator_input = hub.subscribe("aggregator", 64, OverflowPolicy.BACKPRESSURE)
    stalled, stalled_ticks = hub.subscribe("ws:stalled", 16, OverflowPolicy.CUT_OFF)
    _, reader_ticks = hub.subscribe("ws:reader", 16, OverflowPolicy.CUT_OFF, frozenset({"BTCUSDT"}))
    _, stalled_candles = feed.subscribe_candles("ws:stalled", 16, OverflowPolicy.CUT_OFF, None, "1s")
    _, reader_candles = feed.subscribe_candles("ws:reader", 16, OverflowPolicy.CUT_OFF, frozenset({"ETHUSDT"}), "1m")
    received: list[int] = []
    closed_1m: list[Candle] = []
    persisted: list[Candle] = []

    async def ingest() -> None:
        """Bursts, as frames arrive under load: the ingest waits only when its channel is full."""
        async with ticks_send:
            for number in range(TICKS):
                try:
                    ticks_send.send_nowait([make_tick(number)])
                except trio.WouldBlock:
                    await ticks_send.send([make_tick(number)])

    async def read_ticks() -> None:
        async for batch in reader_ticks:
            received.extend(tick.trade_id for tick in batch)

    async def read_candles() -> None:
        async for batch in reader_candles:
            closed_1m.extend(candle for candle in batch if candle.closed)

    async def write_candles() -> None:
        async for batch in closed_receive:
            persisted.extend(batch)

    tracemalloc.start()
    try:
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(ingest)
                nursery.start_soon(fan_out, ticks_receive, hub)
                nursery.start_soon(partial(aggregate, aggregator_input, closed_send, feed, is_live=lambda _: False))
                nursery.start_soon(read_ticks)
                nursery.start_soon(read_candles)
                nursery.start_soon(write_candles)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    # Ingestion finished and the reading subscribers got everything, in order.
    assert hub.ticks_published == TICKS
    assert received == list(range(TICKS // 2))
    assert [c.open_time_ms for c in closed_1m] == [T0 + minute * 60_000 for minute in range(9)]
    assert sum(c.trade_count for c in closed_1m) == (540_000 // 20) // 2
    assert len([c for c in persisted if c.interval == "1s"]) == 2 * 599
    # The stalled ones were cut off, with a reason, holding no more than their buffers.
    assert stalled.cut_off_reason is not None and "buffer of 16 batches" in stalled.cut_off_reason
    assert hub.subscribers_cut_off == 1 and feed.subscribers_cut_off == 1
    held = 0
    async with stalled_ticks:
        async for batch in stalled_ticks:
            held += len(batch)
    assert held <= 16 * 512
    async with stalled_candles:
        assert len([batch async for batch in stalled_candles]) <= 16
    # Memory: the peak (about 2-6 MB here) stays well below what keeping every tick takes (~12 MB).
    assert peak < 0.6 * memory_of_every_tick(), peak


def memory_of_every_tick() -> int:
    tracemalloc.start()
    try:
        every_tick = [make_tick(number) for number in range(TICKS)]
        size, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    del every_tick
    return size
