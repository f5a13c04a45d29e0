"""The Emitter: batches of ticks leave in hand-over order whichever task hands them over, and nothing is
dropped when the channel is full (producers wait instead)."""

from __future__ import annotations

import trio
import trio.testing
from test_ingest_support import make_ticks

from app.ingest.emitter import Emitter
from app.model import Tick


async def test_concurrent_producers_lose_nothing_and_keep_their_order(autojump_clock: trio.testing.MockClock) -> None:
    send, receive = trio.open_memory_channel[list[Tick]](1)
    emitter = Emitter(send)
    ticks = make_ticks("BTCUSDT", 1, 300)
    received: list[Tick] = []

    async def slow_consumer() -> None:
        while len(received) < len(ticks):
            received.extend(await receive.receive())
            await trio.sleep(0.01)

    async def producer(mine: list[Tick]) -> None:
        for tick in mine:
            await emitter.emit([tick])

    async def batch_producer(mine: list[Tick]) -> None:
        for start in range(0, len(mine), 7):
            emitter.enqueue(mine[start : start + 7])
            await emitter.flush()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(slow_consumer)
        nursery.start_soon(producer, ticks[:100])
        nursery.start_soon(producer, ticks[100:200])
        nursery.start_soon(batch_producer, ticks[200:])
    assert sorted(received, key=lambda tick: tick.trade_id) == ticks
    for part in (ticks[:100], ticks[100:200], ticks[200:]):
        ids = {tick.trade_id for tick in part}
        assert [tick for tick in received if tick.trade_id in ids] == part
    assert not emitter.queue


async def test_a_later_tick_never_overtakes_queued_ones(autojump_clock: trio.testing.MockClock) -> None:
    send, receive = trio.open_memory_channel[list[Tick]](1)
    emitter = Emitter(send)
    first, second, third, fourth = make_ticks("BTCUSDT", 1, 4)
    async with trio.open_nursery() as nursery:
        emitter.enqueue([first])
        emitter.enqueue([second, third])
        emitter.enqueue([])  # an empty batch is not queued
        nursery.start_soon(emitter.flush)  # sends [1], then waits: the channel holds one batch
        await trio.testing.wait_all_tasks_blocked()
        assert not emitter.try_send([fourth])  # 2 and 3 are queued: 4 must not jump ahead
        nursery.start_soon(emitter.emit, [fourth])
        await trio.testing.wait_all_tasks_blocked()
        assert [await receive.receive() for _ in range(3)] == [[first], [second, third], [fourth]]


async def test_a_cancelled_flush_keeps_the_tick_for_the_next_one(autojump_clock: trio.testing.MockClock) -> None:
    send, receive = trio.open_memory_channel[list[Tick]](1)
    emitter = Emitter(send)
    first, second = make_ticks("BTCUSDT", 1, 2)
    emitter.enqueue([first])
    emitter.enqueue([second])
    with trio.move_on_after(1):
        await emitter.flush()  # 1 fits, 2 waits for room until cancelled
    assert list(emitter.queue) == [[second]]
    assert await receive.receive() == [first]
    await emitter.flush()
    assert await receive.receive() == [second]
