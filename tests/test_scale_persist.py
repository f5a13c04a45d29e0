"""``persist``: persisters sharing the bus's consumer group write every tick and closed candle once, and a
dead persister's pending entries are claimed and written (real Redis, real SQLite files)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from test_ingest_support import make_ticks, trades

from app.bus.consume import ensure_group, read_new
from app.bus.keys import BusKeys
from app.bus.lease import Lease, LeaseTimings, new_token
from app.bus.publish import BusPublisher
from app.model import Candle
from app.roles.persist import GROUP, PersisterStatus, persist_from_bus
from app.store.sqlite import SQLiteStorage


@pytest.fixture
async def storage(tmp_path: Path) -> AsyncIterator[SQLiteStorage]:
    storage = await SQLiteStorage.open(str(tmp_path / "history.sqlite3"))
    yield storage
    await storage.close()


@pytest.fixture
async def publisher(redis: Any, keys: BusKeys) -> BusPublisher:
    lease = Lease(redis, keys.lease("0/1"), new_token("leader"), LeaseTimings())
    assert await lease.try_acquire()
    return BusPublisher(redis, keys, lease.key, lease.token, max_entries=10_000)


def closed_candle(open_time_ms: int, revision: int = 0) -> Candle:
    return Candle("BTCUSDT", "1m", open_time_ms, open_time_ms + 59_999, Decimal("1"), Decimal("2"), Decimal("0.5"),
                  Decimal("1.5"), Decimal(3 + revision), Decimal("4"), 5, Decimal("0"), Decimal("0"), 10, 14, True,
                  revision)


async def wait_for_ticks(storage: SQLiteStorage, symbol: str, count: int) -> list[Any]:
    while len(got := await storage.ticks(symbol, 0, 0, count + 10)) < count:  # noqa: ASYNC110
        await trio.sleep(0.05)
    return got


async def test_two_persisters_write_every_tick_and_closed_candle_once(
    redis: Any, keys: BusKeys, publisher: BusPublisher, storage: SQLiteStorage
) -> None:
    statuses = [PersisterStatus(), PersisterStatus()]
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for index, status in enumerate(statuses):
                nursery.start_soon(persist_from_bus, redis, keys, f"p{index}", storage, status)
            for first in range(1, 2001, 100):
                await publisher.publish(make_ticks("BTCUSDT", first, 100), [])
            open_version = attrs.evolve(closed_candle(60_000), closed=False)
            await publisher.publish([], [closed_candle(0), closed_candle(0, revision=1), open_version])
            got = await wait_for_ticks(storage, "BTCUSDT", 2000)
            while not await storage.candles("BTCUSDT", "1m", None, None, 10):  # noqa: ASYNC110
                await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
    assert trades(got) == trades(make_ticks("BTCUSDT", 1, 2000))
    assert sum(status.ticks_written for status in statuses) == 2000
    # The open candle is not history; the revision replaced the first version.
    assert await storage.candles("BTCUSDT", "1m", None, None, 10) == [closed_candle(0, revision=1)]


async def test_entries_a_dead_persister_left_pending_are_claimed_and_written(
    redis: Any, keys: BusKeys, publisher: BusPublisher, storage: SQLiteStorage
) -> None:
    await ensure_group(redis, keys.ticks, GROUP)
    await publisher.publish(make_ticks("ETHUSDT", 1, 50), [])
    # A persister reads the entry and dies before it writes or acknowledges it.
    read = await read_new(redis, GROUP, "dead", {keys.ticks: b"t"}, count=10, block_ms=100)
    assert len(read[0].entries) == 1
    status = PersisterStatus()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: persist_from_bus(redis, keys, "alive", storage, status, claim_idle_ms=200,
                                                        claim_every_seconds=0.1))
            got = await wait_for_ticks(storage, "ETHUSDT", 50)
            nursery.cancel_scope.cancel()
    assert trades(got) == trades(make_ticks("ETHUSDT", 1, 50))
    assert status.entries_claimed == 1
    pending = await redis.xpending(keys.ticks, GROUP)
    assert pending.pending == 0
