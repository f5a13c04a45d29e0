"""Symbols added and removed at run time on an API replica, routed to the ingest shard that owns them: the roles
in this process against a real Redis and the exchange simulator."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
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
from app.bus.symbol_requests import SymbolReply
from app.ingest.subscriptions import (
    AlreadySubscribedError,
    ExchangeUnavailableError,
    NotSubscribedError,
    SubscriptionError,
    UnknownSymbolError,
)
from app.replay.simulator import Simulator
from app.roles.api import run_api
from app.roles.ingest import run_ingest
from app.roles.symbol_routing import BusSymbolRouter, error_for, reply_for
from app.service import open_storage
from app.settings import Settings

TOKEN = "test-admin-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


def role_settings(simulator: Simulator, keys: BusKeys, tmp_path: Path) -> Settings:
    return Settings(symbols=("BTCUSDT",), binance_ws_url=simulator.ws_url, binance_rest_url=simulator.rest_url,
                    bus_url=REDIS_URL, bus_prefix=keys.prefix, http_host="127.0.0.1", http_port=0,
                    database_url=f"sqlite:///{tmp_path / 'history.sqlite3'}", admin_token=TOKEN)


@asynccontextmanager
async def running(role: Any, settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """A role in this process; yields an HTTP client of its port."""
    async with trio.open_nursery() as nursery:
        urls = await nursery.start(role, settings)
        async with httpx.AsyncClient(base_url=urls[0]) as client:
            yield client
        nursery.cancel_scope.cancel()


async def health_until(client: httpx.AsyncClient, predicate: Any) -> dict[str, Any]:
    """/health polled until ``predicate(body)`` (the roles' state has no event to wait on from outside)."""
    while True:
        body: dict[str, Any] = (await client.get("/health")).json()
        if predicate(body):
            return body
        await trio.sleep(0.05)


async def listed_until(client: httpx.AsyncClient, predicate: Any) -> list[str]:
    """The symbols of /api/symbols, polled until ``predicate(symbols)``."""
    while True:
        symbols = [row["symbol"] for row in (await client.get("/api/symbols")).json()["symbols"]]
        if predicate(symbols):
            return symbols
        await trio.sleep(0.05)


async def test_a_symbol_added_on_a_replica_is_subscribed_by_its_shard_and_served_then_removed(
    simulator: Simulator, redis: Any, keys: BusKeys, tmp_path: Path
) -> None:
    settings = role_settings(simulator, keys, tmp_path)
    with trio.fail_after(30):
        async with running(run_ingest, settings) as leader, \
                running(partial(run_api, open_storage=open_storage), settings) as replica, \
                running(partial(run_api, open_storage=open_storage), settings) as other_replica:
            await health_until(leader, lambda body: body["leading"])
            added = await replica.post("/api/symbols", json={"symbol": "ethusdt"}, headers=ADMIN)
            assert (added.status_code, added.json()) == (201, {"symbol": "ETHUSDT", "subscribed": True})
            await simulator.wait_subscribed("ethusdt@trade")
            assert list(await redis.hkeys(keys.added_symbols)) == [b"ETHUSDT"]
            # Every replica serves it at once (before its first trade), whichever replica was asked.
            await listed_until(other_replica, lambda symbols: "ETHUSDT" in symbols)
            again = await replica.post("/api/symbols", json={"symbol": "ETHUSDT"}, headers=ADMIN)
            assert (again.status_code, again.json()["error"]["code"]) == (409, "already_subscribed")
            unknown = await replica.post("/api/symbols", json={"symbol": "FOOBAR"}, headers=ADMIN)
            assert (unknown.status_code, unknown.json()["error"]["code"]) == (422, "unknown_symbol")
            async with open_websocket_url(str(replica.base_url).replace("http://", "ws://") + "/ws") as ws:
                await ws.send_message(json.dumps({"op": "subscribe", "channel": "ticks", "symbols": ["ETHUSDT"]}))
                assert json.loads(await ws.get_message())["op"] == "subscribed"
                simulator.publish(make_ticks("ETHUSDT", 1, 3, price="2683.80"))
                received: list[int] = []
                while len(received) < 3:
                    received += [tick["trade_id"] for tick in json.loads(await ws.get_message())["data"]]
            assert received == [1, 2, 3]
            # An ingest process started later (here a standby) subscribes what was added at run time.
            async with running(run_ingest, settings) as standby:
                await health_until(standby, lambda body: body["symbols"] == ["BTCUSDT", "ETHUSDT"])
                removed = await replica.delete("/api/symbols/ETHUSDT", headers=ADMIN)
                assert (removed.status_code, removed.json()) == (200, {"symbol": "ETHUSDT", "subscribed": False})
                await health_until(standby, lambda body: body["symbols"] == ["BTCUSDT"])
            assert (await leader.get("/health")).json()["symbols"] == ["BTCUSDT"]
            assert list(await redis.hkeys(keys.added_symbols)) == []
            gone = await replica.delete("/api/symbols/ETHUSDT", headers=ADMIN)
            assert (gone.status_code, gone.json()["error"]["code"]) == (404, "not_subscribed")
            assert "ETHUSDT" not in await listed_until(replica, lambda symbols: True)
            await listed_until(other_replica, lambda symbols: "ETHUSDT" not in symbols)


async def test_a_replica_answers_503_when_no_ingest_leader_answers(redis: Any, keys: BusKeys) -> None:
    router = BusSymbolRouter(redis, keys, timeout_seconds=0.2)
    with trio.fail_after(10), pytest.raises(ExchangeUnavailableError, match="no ingest leader answered"):
        await router.add("ETHUSDT")


@pytest.mark.parametrize("error", [
    AlreadySubscribedError("ETHUSDT"), NotSubscribedError("ETHUSDT"), UnknownSymbolError("ETHUSDT"),
    ExchangeUnavailableError("no connection acknowledged ETHUSDT in time"),
    SubscriptionError("the exchange refused to subscribe ETHUSDT: -1121"),
])
def test_a_leaders_refusal_reaches_the_replica_as_the_same_error_and_message(error: SubscriptionError) -> None:
    reply = reply_for(error)
    assert isinstance(reply, SymbolReply) and reply.error is not None
    back = error_for(reply, "ETHUSDT")
    assert (type(back), str(back)) == (type(error), str(error))
