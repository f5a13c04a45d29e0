"""The roles together as real processes: ingest leader and standby, a persister and an API replica.

A /ws subscriber of the replica sees every trade the exchange made, once and in order, across a kill -9 of the
leader; the database holds each trade once; the replica's REST answers with the same trades and candles.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import trio
from test_ingest_support import make_ticks, trades
from test_scale_ingest import SYMBOLS, market, role_process, wait_for_holder, wait_until_published
from trio_websocket import open_websocket_url

from app.bus.keys import BusKeys
from app.replay.simulator import Simulator
from app.store.sqlite import SQLiteStorage


async def test_a_replica_subscriber_and_the_database_see_every_trade_once_across_a_failover(
    simulator: Simulator, redis: Any, keys: BusKeys, tmp_path: Path
) -> None:
    database = f"sqlite:///{tmp_path / 'history.sqlite3'}"
    received: list[dict[str, Any]] = []
    with trio.fail_after(300):  # five Python processes starting on a busy 2-core machine
        async with (
            role_process("ingest", simulator, keys) as leader,
            role_process("ingest", simulator, keys) as standby,
            role_process("persist", simulator, keys, "--database-url", database),
            role_process("api", simulator, keys, "--database-url", database) as api,
        ):
            await wait_for_holder(redis, keys, leader.token)
            await simulator.wait_until(lambda: simulator.open_connections == 2)
            async with open_websocket_url(api.token.replace("http://", "ws://") + "/ws") as ws:
                await ws.send_message(json.dumps({"op": "subscribe", "channel": "ticks", "symbols": "*"}))
                assert json.loads(await ws.get_message())["op"] == "subscribed"
                simulator.publish(market(1, 100))
                await wait_until_published(redis, keys, 100, leader, standby)
                leader.process.kill()
                simulator.publish(market(101, 100))
                await wait_for_holder(redis, keys, standby.token)
                await wait_until_published(redis, keys, 200, standby)
                while len(received) < 400:
                    message = json.loads(await ws.get_message(), parse_float=Decimal)
                    received.extend(message["data"])
            async with httpx.AsyncClient(base_url=api.token) as client:
                latest = (await client.get("/api/ticks")).json()
            storage = await SQLiteStorage.open(database.removeprefix("sqlite:///"))
            try:
                while len(await storage.ticks("ETHUSDT", 0, 0, 1000)) < 200:  # noqa: ASYNC110
                    await trio.sleep(0.1)
                stored = {symbol: await storage.ticks(symbol, 0, 0, 1000) for symbol in SYMBOLS}
            finally:
                await storage.close()
    for symbol in SYMBOLS:
        exchange = make_ticks(symbol, 1, 200)
        seen = [t for t in received if t["symbol"] == symbol]
        assert [t["trade_id"] for t in seen] == list(range(1, 201))
        assert [t["price"] for t in seen] == [t.price for t in exchange]
        assert trades(stored[symbol]) == trades(exchange)
        assert latest[symbol]["trade_id"] == 200
