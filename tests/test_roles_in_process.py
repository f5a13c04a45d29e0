"""The api and persist role supervisors in this process, over the machine's Redis (a key prefix of the test's
own) and SQLite files: the replica serves the bus's state through the same app as ``serve``, and each role
closes its database when it is stopped."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from conftest import REDIS_URL
from trio_websocket import open_websocket_url
from web_harness import make_ticks

from app.bus.keys import BusKeys
from app.bus.lease import Lease, LeaseTimings, new_token
from app.bus.publish import BusPublisher
from app.intervals import Interval
from app.roles.api import run_api
from app.roles.persist import run_persist
from app.service import open_storage
from app.settings import Settings
from app.store.storage import Storage, StorageError


def role_settings(keys: BusKeys, tmp_path: Path) -> Settings:
    return Settings(symbols=("BTCUSDT",), candle_intervals=(Interval("1m"),), bus_url=REDIS_URL,
                    bus_prefix=keys.prefix, database_url=f"sqlite:///{tmp_path / 'history.sqlite3'}",
                    http_host="127.0.0.1", http_port=0)


def recording(opened: list[Storage]) -> Callable[[Settings], Awaitable[Storage]]:
    async def open_and_record(settings: Settings) -> Storage:
        storage = await open_storage(settings)
        opened.append(storage)
        return storage

    return open_and_record


async def assert_closed(storage: Storage) -> None:
    with pytest.raises(StorageError, match="closed database"):
        await storage.last_trade_ids()


async def publisher_for(redis: Any, keys: BusKeys) -> BusPublisher:
    lease = Lease(redis, keys.lease("0/1"), new_token("leader"), LeaseTimings())
    assert await lease.try_acquire()
    return BusPublisher(redis, keys, lease.key, lease.token, max_entries=10_000)


async def test_the_api_replica_serves_the_snapshot_then_the_stream_and_closes_its_database(
    redis: Any, keys: BusKeys, tmp_path: Path
) -> None:
    publisher = await publisher_for(redis, keys)
    await publisher.publish(make_ticks("BTCUSDT", 1, 10), [])
    opened: list[Storage] = []
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            urls = await nursery.start(partial(run_api, role_settings(keys, tmp_path), recording(opened)))
            ws_url = urls[0].replace("http://", "ws://") + "/ws"
            async with httpx.AsyncClient(base_url=urls[0]) as client, open_websocket_url(ws_url) as ws:
                # The snapshot: served before anything is streamed.
                assert (await client.get("/api/ticks")).json()["BTCUSDT"]["trade_id"] == 10
                await ws.send_message('{"op": "subscribe", "channel": "ticks", "symbols": ["BTCUSDT"]}')
                assert json.loads(await ws.get_message())["op"] == "subscribed"
                await publisher.publish(make_ticks("BTCUSDT", 11, 5), [])
                streamed: list[int] = []
                while len(streamed) < 5:
                    streamed += [tick["trade_id"] for tick in json.loads(await ws.get_message())["data"]]
                assert streamed == [11, 12, 13, 14, 15]
                health = await client.get("/health")
                assert health.status_code == 200, health.text
                (row,) = (await client.get("/api/symbols")).json()["symbols"]
                assert row["symbol"] == "BTCUSDT" and row["last_trade_id"] == 15
            nursery.cancel_scope.cancel()
    (storage,) = opened
    await assert_closed(storage)


async def test_the_persister_serves_its_health_and_closes_its_database(
    redis: Any, keys: BusKeys, tmp_path: Path
) -> None:
    opened: list[Storage] = []
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            urls = await nursery.start(partial(run_persist, role_settings(keys, tmp_path), recording(opened)))
            async with httpx.AsyncClient(base_url=urls[0]) as client:
                health = await client.get("/health")
            nursery.cancel_scope.cancel()
    assert health.status_code == 200 and health.json()["role"] == "persist"
    (storage,) = opened
    await assert_closed(storage)
