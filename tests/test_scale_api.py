"""An API replica (``marketdata api``) in this process against a real Redis: what it tells its /ws subscribers
when trades are missing on the bus."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import trio
from conftest import REDIS_URL
from trio_websocket import WebSocketConnection, open_websocket_url
from web_harness import make_ticks

from app.bus.keys import BusKeys
from app.bus.publish import BusPublisher
from app.convert import ticks_to_bus
from app.roles.api import BUS_GAP_REASON, UNPUBLISHED_REASON, run_api
from app.service import open_storage
from app.settings import Settings

# Appends tick batches as numbered entries and trims the stream to its newest entry, in one atomic step: what a
# replica too far behind finds (it cannot read the appended entries before they are gone).
_APPEND_AND_TRIM = """
for i = 1, #ARGV do
  local seq = redis.call('INCR', KEYS[2])
  redis.call('XADD', KEYS[1], '*', 's', seq, 't', ARGV[i])
end
return redis.call('XTRIM', KEYS[1], 'MAXLEN', '=', 1)
"""


@asynccontextmanager
async def running_replica(keys: BusKeys, tmp_path: Path) -> AsyncIterator[str]:
    """The replica's /ws URL."""
    settings = Settings(symbols=("BTCUSDT",), bus_url=REDIS_URL, bus_prefix=keys.prefix, http_host="127.0.0.1",
                        http_port=0, database_url=f"sqlite:///{tmp_path / 'history.sqlite3'}")
    async with trio.open_nursery() as nursery:
        urls = await nursery.start(partial(run_api, settings, open_storage=open_storage))
        yield urls[0].replace("http://", "ws://", 1) + "/ws"
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def subscribed_to_a_replica(
    redis: Any, keys: BusKeys, tmp_path: Path
) -> AsyncIterator[tuple[BusPublisher, WebSocketConnection]]:
    """A leader's publisher that has published BTCUSDT trades 1-3, and a /ws client of a replica started after
    that, subscribed to BTCUSDT's ticks."""
    lease_key = keys.lease("0/1")
    await redis.set(lease_key, "test-leader")
    publisher = BusPublisher(redis, keys, lease_key, "test-leader", max_entries=1_000)
    await publisher.publish(make_ticks("BTCUSDT", 1, 3), [])
    async with running_replica(keys, tmp_path) as ws_url, open_websocket_url(ws_url) as ws:
        await ws.send_message(json.dumps({"op": "subscribe", "channel": "ticks", "symbols": ["BTCUSDT"]}))
        assert json.loads(await ws.get_message())["op"] == "subscribed"
        yield publisher, ws


async def until_trade(ws: WebSocketConnection, trade_id: int) -> tuple[list[int], list[dict[str, Any]]]:
    """Messages until the tick ``trade_id`` came: (trade ids received, gap messages)."""
    trade_ids: list[int] = []
    gaps: list[dict[str, Any]] = []
    while trade_id not in trade_ids:
        message = json.loads(await ws.get_message())
        if message.get("op") == "gap":
            gaps.append(message)
        elif message.get("channel") == "ticks":
            trade_ids += [tick["trade_id"] for tick in message["data"]]
    return trade_ids, gaps


async def test_a_replica_tells_its_subscribers_of_trades_trimmed_from_the_bus_before_it_read_them(
    redis: Any, keys: BusKeys, tmp_path: Path
) -> None:
    with trio.fail_after(20):
        async with subscribed_to_a_replica(redis, keys, tmp_path) as (_, ws):
            append_and_trim = redis.register_script(_APPEND_AND_TRIM)
            await append_and_trim(keys=[keys.ticks, keys.sequence(keys.ticks)],
                                  args=[ticks_to_bus(make_ticks("BTCUSDT", 4, 3)),
                                        ticks_to_bus(make_ticks("BTCUSDT", 7, 3))])
            trade_ids, gaps = await until_trade(ws, 9)
    assert trade_ids == [7, 8, 9]
    assert [(gap["symbol"], gap["first_trade_id"], gap["last_trade_id"], gap["reason"]) for gap in gaps] == [
        ("BTCUSDT", 4, 6, BUS_GAP_REASON)]


async def test_a_replica_tells_its_subscribers_of_trades_the_leader_could_not_publish(
    redis: Any, keys: BusKeys, tmp_path: Path
) -> None:
    with trio.fail_after(20):
        async with subscribed_to_a_replica(redis, keys, tmp_path) as (publisher, ws):
            # A hole the leader gave up on (REST could not serve it): the next batch starts after it.
            await publisher.publish(make_ticks("BTCUSDT", 10, 2), [])
            trade_ids, gaps = await until_trade(ws, 11)
    assert trade_ids == [10, 11]
    assert [(gap["first_trade_id"], gap["last_trade_id"], gap["reason"]) for gap in gaps] == [
        (4, 9, UNPUBLISHED_REASON)]
