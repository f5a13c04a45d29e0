"""The shard publisher against a real Redis: what a leader puts on the bus, in what order, with which revisions.

The exchange's REST side is a function serving the test's own market (the unit under test is the publisher);
the clock is the test's (``clock_ms``), so closing by the clock happens exactly when the test says.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
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
async def leader(
    redis: Any, keys: BusKeys, exchange: Exchange, name: str, is_live: Callable[[str], bool] = lambda symbol: True
) -> AsyncIterator[Leader]:
    """A publisher that holds the shard's lease (taken from whoever had it) and has been told it leads."""
    lease = Lease(redis, keys.lease("0/1"), new_token(name), LeaseTimings(ttl_seconds=60))
    await redis.delete([lease.key])
    assert await lease.try_acquire()
    send, receive = trio.open_memory_channel[list[Tick] | bool](100)
    status = ShardStatus()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: publish_shard(
            receive, ShardBus(redis, keys, lease.key, lease.token, 10_000), parse_intervals("1m"), exchange.fetch,
            exchange.last_ids, status, max_hole_trades=1000, is_live=is_live,
            clock_ms=exchange.clock_ms))
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


def closed_versions(candles: Sequence[Candle], symbol: str, open_time_ms: int) -> list[tuple[int, int]]:
    """(revision, trade count) of each closed version of one candle, in publication order."""
    return [(c.revision, c.trade_count) for c in candles
            if c.closed and c.symbol == symbol and c.interval == "1m" and c.open_time_ms == open_time_ms]


async def test_a_new_leader_revises_a_candle_its_predecessor_closed_early_above_every_published_revision(
    redis: Any, keys: BusKeys
) -> None:
    exchange = Exchange(now_ms=T0 + 3 * MINUTE + 1)
    minute = exchange.make([trade("BTCUSDT", trade_id, T0 + trade_id * 1000) for trade_id in range(1, 25)])
    later = exchange.make([trade("ETHUSDT", 1, T0 + 3 * MINUTE)])
    async with leader(redis, keys, exchange, "first") as first:
        # ETHUSDT's trade says the exchange's clock is 3 minutes on: BTCUSDT's first minute closes with the 5
        # trades in, while its 19 others are still on their way.
        await first.events.send([*minute[:5], *later])
        await until_published(redis, keys, "ETHUSDT", 1)
    assert closed_versions(await published_candles(redis, keys), "BTCUSDT", T0) == [(0, 5)]
    async with leader(redis, keys, exchange, "second") as second:
        await second.events.send(minute[5:])
        await until_published(redis, keys, "BTCUSDT", 24)
    versions = closed_versions(await published_candles(redis, keys), "BTCUSDT", T0)
    revisions = [revision for revision, _ in versions]
    assert revisions == sorted(set(revisions)), versions  # each version above every one before it
    assert versions[-1][1] == 24


async def test_the_clock_closes_no_candle_of_a_symbol_whose_trades_are_held_back(redis: Any, keys: BusKeys) -> None:
    exchange = Exchange(now_ms=T0 + 3 * MINUTE + 1)
    minute = exchange.make([trade("BTCUSDT", trade_id, T0 + trade_id * 1000) for trade_id in range(1, 25)])
    later = exchange.make([trade("ETHUSDT", 1, T0 + 3 * MINUTE)])
    async with leader(redis, keys, exchange, "leader", is_live=lambda symbol: symbol != "BTCUSDT") as publisher:
        await publisher.events.send([*minute[:5], *later])
        await until_published(redis, keys, "ETHUSDT", 1)
        await publisher.events.send(minute[5:])
        await until_published(redis, keys, "BTCUSDT", 24)
    assert closed_versions(await published_candles(redis, keys), "BTCUSDT", T0) == []


async def test_batches_waiting_behind_each_other_go_out_in_one_publish(redis: Any, keys: BusKeys) -> None:
    exchange = Exchange()
    ticks = exchange.make([trade("BTCUSDT", trade_id, T0 + trade_id) for trade_id in range(1, 11)])
    async with leader(redis, keys, exchange, "leader") as publisher:
        await publisher.events.send(ticks[:1])
        await until_published(redis, keys, "BTCUSDT", 1)
        # Five socket reads queued before the leader runs again (no checkpoint between): one entry, in order.
        for trade_id in range(1, 10, 2):
            publisher.events.send_nowait(ticks[trade_id:trade_id + 2])
        await until_published(redis, keys, "BTCUSDT", 10)
        entries = await redis.xlen(keys.ticks)
    assert await published_ticks(redis, keys) == [("BTCUSDT", trade_id) for trade_id in range(1, 11)]
    assert publisher.status.batches_published == entries
    assert entries == 2
