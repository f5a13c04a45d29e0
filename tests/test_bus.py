"""The bus against a real Redis: the lease, the publish fence, resume points, and readers that see losses.

Each test has its own key prefix on the machine's Redis (127.0.0.1:6379), deleted afterwards; without a Redis
server the tests skip with one line saying what to install.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
import trio

from app.bus.follow import BusEntry, StreamGap, StreamPosition, check_sequence, follow_stream, stream_end
from app.bus.keys import BusKeys
from app.bus.lease import Lease, LeaseTimings, campaign, new_token
from app.bus.publish import BusPublisher, Fenced, Overlap, last_trade_ids
from app.bus.snapshot import take_snapshot
from app.convert import candles_from_bus, ticks_from_bus
from app.model import Candle, Tick


def tick(trade_id: int, symbol: str = "BTCUSDT", price: str = "61837.63000000") -> Tick:
    return Tick(symbol, Decimal(price), Decimal("0.00100000"), 1_723_161_300_000 + trade_id, 1_723_161_300_001 +
                trade_id, trade_id, trade_id % 2 == 0)


def candle(open_time_ms: int, revision: int = 0, *, closed: bool = False) -> Candle:
    return Candle("BTCUSDT", "1m", open_time_ms, open_time_ms + 59_999, Decimal("1.10"), Decimal("2"),
                  Decimal("0.5"), Decimal("1"), Decimal("3.000"), Decimal("4"), 5, Decimal("0"), Decimal("0"), 10, 14,
                  closed, revision)


async def test_only_one_process_acquires_a_lease_and_only_its_holder_renews_or_releases_it(
    redis: Any, keys: BusKeys
) -> None:
    timings = LeaseTimings(ttl_seconds=3)
    first = Lease(redis, keys.lease("0/1"), new_token("first"), timings)
    second = Lease(redis, keys.lease("0/1"), new_token("second"), timings)
    assert await first.try_acquire()
    assert not await second.try_acquire()
    assert not await second.renew()
    await second.release()
    assert await first.holder() == first.token
    assert await first.renew()
    await first.release()
    assert await first.holder() is None
    assert await second.try_acquire()


async def test_a_leader_that_lost_its_lease_cannot_publish_a_single_trade(redis: Any, keys: BusKeys) -> None:
    timings = LeaseTimings(ttl_seconds=0.2)
    old = Lease(redis, keys.lease("0/1"), new_token("old"), timings)
    new = Lease(redis, keys.lease("0/1"), new_token("new"), timings)
    assert await old.try_acquire()
    old_publisher = BusPublisher(redis, keys, old.key, old.token, max_entries=1000)
    await old_publisher.publish([tick(1), tick(2)], [])
    # The old leader freezes past its TTL (a SIGSTOP); the standby takes over and publishes.
    with trio.fail_after(10):
        while await old.holder() is not None:  # noqa: ASYNC110 (Redis expires the key: nothing to wait on)
            await trio.sleep(0.02)
    assert await new.try_acquire()
    new_publisher = BusPublisher(redis, keys, new.key, new.token, max_entries=1000)
    await new_publisher.publish([tick(3)], [])
    # The old leader wakes up with a batch in hand: refused, nothing written.
    with pytest.raises(Fenced, match="is not held by this process"):
        await old_publisher.publish([tick(4)], [candle(0)])
    entries = await redis.xrange(keys.ticks)
    assert [[t.trade_id for t in ticks_from_bus(entry.field_values[b"t"])] for entry in entries] == [[1, 2], [3]]
    assert await last_trade_ids(redis, keys) == {"BTCUSDT": 3}
    assert await redis.xlen(keys.candles) == 0


async def test_a_batch_repeating_published_trades_is_refused_whole(redis: Any, keys: BusKeys) -> None:
    lease = Lease(redis, keys.lease("0/1"), new_token("leader"), LeaseTimings())
    assert await lease.try_acquire()
    publisher = BusPublisher(redis, keys, lease.key, lease.token, max_entries=1000)
    await publisher.publish([tick(10), tick(11), tick(5, "ETHUSDT")], [])
    with pytest.raises(Overlap, match="BTCUSDT trade 11"):
        await publisher.publish([tick(6, "ETHUSDT"), tick(11), tick(12)], [])
    # Out of id order within the batch: a reader would drop 13 as a repeat of 14.
    with pytest.raises(ValueError, match="BTCUSDT trade 13 after 14"):
        await publisher.publish([tick(12), tick(14), tick(13)], [])
    assert await last_trade_ids(redis, keys) == {"BTCUSDT": 11, "ETHUSDT": 5}
    assert await redis.xlen(keys.ticks) == 1


async def test_published_state_is_exact_latest_tick_and_newest_candle_per_symbol(redis: Any, keys: BusKeys) -> None:
    lease = Lease(redis, keys.lease("0/1"), new_token("leader"), LeaseTimings())
    assert await lease.try_acquire()
    publisher = BusPublisher(redis, keys, lease.key, lease.token, max_entries=1000)
    closed, current = candle(0, revision=1, closed=True), candle(60_000)
    await publisher.publish([tick(1), tick(2, price="61837.64000000")], [closed, current])
    latest = await redis.hget(keys.latest_ticks, "BTCUSDT")
    assert ticks_from_bus(latest) == [tick(2, price="61837.64000000")]
    assert str(ticks_from_bus(latest)[0].price) == "61837.64000000"
    assert candles_from_bus(await redis.hget(keys.candle_state, "BTCUSDT|1m")) == [current]
    entry = (await redis.xrange(keys.candles))[0]
    assert candles_from_bus(entry.field_values[b"c"]) == [closed, current]


def test_a_missing_sequence_number_is_a_gap_and_a_smaller_one_a_restarted_bus() -> None:
    at_five = StreamPosition(b"1-0", 5)
    assert check_sequence("s", at_five, 6) is None
    assert check_sequence("s", StreamPosition(), 900) is None  # from the start: whatever the stream still holds
    trimmed = check_sequence("s", at_five, 9)
    assert trimmed is not None and (trimmed.first_sequence, trimmed.last_sequence) == (6, 8)
    restarted = check_sequence("s", at_five, 1)
    assert restarted is not None and "restarted" in restarted.reason


async def test_a_reader_behind_the_trim_point_gets_an_explicit_gap(redis: Any, keys: BusKeys) -> None:
    lease = Lease(redis, keys.lease("0/1"), new_token("leader"), LeaseTimings())
    assert await lease.try_acquire()
    # MAXLEN ~ trims whole radix-tree nodes (100 entries by default): a small cap trims soon.
    publisher = BusPublisher(redis, keys, lease.key, lease.token, max_entries=10)
    await publisher.publish([tick(1)], [])
    position = await stream_end(redis, keys.ticks)
    assert position.sequence == 1
    for trade_id in range(2, 400):
        await publisher.publish([tick(trade_id)], [])
    send, receive = trio.open_memory_channel[list[BusEntry | StreamGap]](10)
    got: list[BusEntry | StreamGap] = []
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(follow_stream, redis, keys.ticks, b"t", position, send)
            async for items in receive:
                got += items
                if isinstance(got[-1], BusEntry) and got[-1].sequence == 399:
                    nursery.cancel_scope.cancel()
    gap = got[0]
    assert isinstance(gap, StreamGap) and gap.first_sequence == 2
    entries = [item for item in got if isinstance(item, BusEntry)]
    assert gap.last_sequence == entries[0].sequence - 1
    assert [e.sequence for e in entries] == list(range(entries[0].sequence, 400))
    assert [ticks_from_bus(e.payload)[0].trade_id for e in entries] == list(range(entries[0].sequence, 400))


async def renewals(lease: Lease, count: int) -> None:
    """Returns once ``lease``'s key has had its time to live put back up ``count`` times (renewed)."""
    last = await lease.redis.pttl(lease.key)
    while count > 0:
        await trio.sleep(0.01)
        remaining = await lease.redis.pttl(lease.key)
        count -= remaining > last
        last = remaining


async def test_a_standby_takes_over_when_the_leader_stops_renewing(redis: Any, keys: BusKeys) -> None:
    timings = LeaseTimings(ttl_seconds=0.6)
    leader = Lease(redis, keys.lease("1/2"), new_token("leader"), timings)
    standby = Lease(redis, keys.lease("1/2"), new_token("standby"), timings)
    leader_send, leader_changes = trio.open_memory_channel[bool](4)
    standby_send, standby_changes = trio.open_memory_channel[bool](4)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            leader_scope = trio.CancelScope()

            async def lead() -> None:
                with leader_scope:
                    await campaign(leader, leader_send)

            nursery.start_soon(lead)
            assert await leader_changes.receive() is True
            nursery.start_soon(campaign, standby, standby_send)
            await renewals(leader, 6)  # two TTLs' worth: the leader keeps it, the standby waits
            assert await leader.holder() == leader.token
            with pytest.raises(trio.WouldBlock):
                standby_changes.receive_nowait()
            leader_scope.cancel()  # the leader dies without releasing (how fast the standby takes over: bench)
            assert await standby_changes.receive() is True
            assert await standby.holder() == standby.token
            nursery.cancel_scope.cancel()


async def test_a_snapshot_and_the_stream_after_it_hold_every_trade(redis: Any, keys: BusKeys) -> None:
    lease = Lease(redis, keys.lease("0/1"), new_token("leader"), LeaseTimings())
    assert await lease.try_acquire()
    publisher = BusPublisher(redis, keys, lease.key, lease.token, max_entries=1000)
    await publisher.publish([tick(1), tick(2)], [candle(0)])
    snapshot = await take_snapshot(redis, keys)
    await publisher.publish([tick(3)], [])
    assert snapshot.position.sequence == 1
    assert snapshot.last_trade_ids == {"BTCUSDT": 2}
    assert snapshot.latest == {"BTCUSDT": tick(2)}
    assert snapshot.candles == [candle(0)]
    after = await redis.xrange(keys.ticks, start=b"(" + snapshot.position.entry_id)
    assert [t.trade_id for entry in after for t in ticks_from_bus(entry.field_values[b"t"])] == [3]
    empty = await take_snapshot(redis, BusKeys(prefix=keys.prefix + "-empty"))
    assert (empty.position, empty.latest, empty.candles) == (StreamPosition(), {}, [])


async def test_a_revision_of_an_older_candle_never_moves_the_current_candle_back(redis: Any, keys: BusKeys) -> None:
    # A late trade revises minute 0 after minute 1 was published: a new leader must continue minute 1.
    lease = Lease(redis, keys.lease("0/1"), new_token("leader"), LeaseTimings())
    assert await lease.try_acquire()
    publisher = BusPublisher(redis, keys, lease.key, lease.token, max_entries=1000)
    current = candle(60_000)
    await publisher.publish([tick(1)], [candle(0, closed=True), current])
    await publisher.publish([tick(2)], [candle(0, revision=1, closed=True)])
    assert candles_from_bus(await redis.hget(keys.candle_state, "BTCUSDT|1m")) == [current]
    newer = candle(60_000, revision=1, closed=True)
    await publisher.publish([tick(3)], [newer])
    assert candles_from_bus(await redis.hget(keys.candle_state, "BTCUSDT|1m")) == [newer]


async def test_a_series_state_holds_the_closed_candles_a_successor_may_revise(redis: Any, keys: BusKeys) -> None:
    lease = Lease(redis, keys.lease("0/1"), new_token("leader"), LeaseTimings())
    assert await lease.try_acquire()
    publisher = BusPublisher(redis, keys, lease.key, lease.token, max_entries=1000)
    state = [candle(0, closed=True), candle(60_000, closed=True), candle(120_000)]
    await publisher.publish([tick(1)], state[:2], {"BTCUSDT|1m": state})
    assert candles_from_bus(await redis.hget(keys.candle_state, "BTCUSDT|1m")) == state
    # A state ending in an older candle than the one recorded never replaces it.
    revised = candle(0, revision=1, closed=True)
    await publisher.publish([tick(2)], [revised], {"BTCUSDT|1m": [revised]})
    assert candles_from_bus(await redis.hget(keys.candle_state, "BTCUSDT|1m")) == state
    assert (await take_snapshot(redis, keys)).candles == state
