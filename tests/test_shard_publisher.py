"""The shard publisher against a real Redis: what a leader puts on the bus, in what order, with which revisions.

The exchange's REST side is a function serving the test's own market (the unit under test is the publisher);
the clock is the test's (``clock_ms``), so closing by the clock happens exactly when the test says.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio
from test_ingest_support import make_tick

from app.bus.keys import BusKeys
from app.bus.lease import Lease, LeaseTimings, new_token
from app.bus.publish import last_trade_ids
from app.convert import candles_from_bus, ticks_from_bus
from app.intervals import parse_intervals
from app.model import Candle, Tick
from app.roles.shard_publisher import ShardBus, ShardStatus, publish_shard

MINUTE = 60_000
T0 = 1_723_161_240_000  # a minute's start


def trade(symbol: str, trade_id: int, at_ms: int) -> Tick:
    return attrs.evolve(make_tick(symbol, trade_id), trade_time_ms=at_ms, event_time_ms=at_ms + 1)


@attrs.define
class Exchange:
    """The trades the exchange made, for the publisher's REST look-ups."""

    trades: dict[str, list[Tick]] = attrs.Factory(dict)
    now_ms: int = T0

    def make(self, ticks: Sequence[Tick]) -> list[Tick]:
        for tick in ticks:
            self.trades.setdefault(tick.symbol, []).append(tick)
        return list(ticks)

    async def fetch(self, symbol: str, first: int, last: int) -> list[Tick]:
        return [tick for tick in self.trades.get(symbol, []) if first <= tick.trade_id <= last]

    async def last_ids(self) -> dict[str, int]:
        return {symbol: ticks[-1].trade_id for symbol, ticks in self.trades.items()}

    def clock_ms(self) -> int:
        return self.now_ms


@attrs.define
class Leader:
    events: trio.MemorySendChannel[list[Tick] | bool]
    status: ShardStatus


@asynccontextmanager
async def leader(redis: Any, keys: BusKeys, exchange: Exchange, name: str) -> AsyncIterator[Leader]:
    """A publisher that holds the shard's lease (taken from whoever had it) and has been told it leads."""
    lease = Lease(redis, keys.lease("0/1"), new_token(name), LeaseTimings(ttl_seconds=60))
    await redis.delete([lease.key])
    assert await lease.try_acquire()
    send, receive = trio.open_memory_channel[list[Tick] | bool](100)
    status = ShardStatus()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: publish_shard(
            receive, ShardBus(redis, keys, lease.key, lease.token, 10_000), parse_intervals("1m"), exchange.fetch,
            exchange.last_ids, status, max_hole_trades=1000, clock_ms=exchange.clock_ms))
        await send.send(True)
        yield Leader(send, status)
        await send.aclose()


async def published_ticks(redis: Any, keys: BusKeys) -> list[tuple[str, int]]:
    return [(tick.symbol, tick.trade_id) for entry in await redis.xrange(keys.ticks)
            for tick in ticks_from_bus(entry.field_values[b"t"])]


async def published_candles(redis: Any, keys: BusKeys) -> list[Candle]:
    return [candle for entry in await redis.xrange(keys.candles)
            for candle in candles_from_bus(entry.field_values[b"c"])]


async def until_published(redis: Any, keys: BusKeys, symbol: str, last_id: int) -> None:
    with trio.fail_after(10):
        while (await last_trade_ids(redis, keys)).get(symbol) != last_id:  # noqa: ASYNC110
            await trio.sleep(0.01)


async def test_trades_fetched_for_holes_go_out_in_id_order_with_the_live_ones(redis: Any, keys: BusKeys) -> None:
    exchange = Exchange()
    ticks = exchange.make([trade("BTCUSDT", trade_id, T0 + trade_id) for trade_id in range(1, 9)])
    async with leader(redis, keys, exchange, "leader") as publisher:
        await publisher.events.send(ticks[:3])
        await until_published(redis, keys, "BTCUSDT", 3)
        # Ingest gave up two holes (4 and 6): both are fetched and published in their places.
        await publisher.events.send([ticks[4], ticks[6], ticks[7]])
        await until_published(redis, keys, "BTCUSDT", 8)
    assert await published_ticks(redis, keys) == [("BTCUSDT", trade_id) for trade_id in range(1, 9)]

