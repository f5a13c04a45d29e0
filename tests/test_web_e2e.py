"""The whole service fed by the exchange simulator, through real sockets: health, live symbols, the feed."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio
from test_backfill import rest_server
from test_ingest_support import make_ticks
from trio_websocket import open_websocket_url

from app import service
from app.intervals import Interval
from app.model import Tick
from app.replay.cli import shipped_recording
from app.replay.config import ManualSource, ReplaySource, SimulatorConfig
from app.replay.simulator import Simulator, open_simulator
from app.replay.sources import LoadedRecording, load_recording
from app.settings import Settings


@pytest.fixture(scope="module")
def demo_recording() -> LoadedRecording:
    path = shipped_recording("demo-binance-2024-08-08")
    assert path is not None
    return load_recording(path)


def service_settings(simulator: Simulator, symbols: tuple[str, ...], **changes: Any) -> Settings:
    settings = Settings(
        symbols=symbols,
        binance_ws_url=simulator.ws_url,
        binance_rest_url=simulator.rest_url,
        candle_intervals=(Interval("1m"), Interval("5m")),
        http_host="127.0.0.1",
        http_port=0,
        database_url="sqlite:///:memory:",
    )
    return attrs.evolve(settings, **changes)


@asynccontextmanager
async def running_service(settings: Settings) -> AsyncIterator[str]:
    """The service as ``marketdata serve`` runs it, in this process; yields its base URL."""
    async with trio.open_nursery() as nursery:
        urls = await nursery.start(service.run, settings)
        yield urls[0]
        nursery.cancel_scope.cancel()


async def poll_health(client: httpx.AsyncClient, status: int) -> dict[str, Any]:
    """Polls /health until it answers ``status`` (the service runs its own clock: there is no event to wait on)."""
    while True:
        response = await client.get("/health")
        if response.status_code == status:
            body: dict[str, Any] = response.json()
            return body
        await trio.sleep(0.05)


# Longer than any test: the test itself ends the stall.
STALL_UNTIL_ENDED = 24 * 3600.0


@pytest.mark.slow
async def test_health_turns_503_when_the_exchange_stalls_and_200_when_data_flows_again(
    demo_recording: LoadedRecording,
) -> None:
    source = ReplaySource(path=Path("demo"), speed=1.0, loop=True, recording=demo_recording)
    with trio.fail_after(40):
        async with open_simulator(SimulatorConfig(source=source)) as simulator:
            settings = service_settings(simulator, ("BTCUSDT", "ETHUSDT"), stale_after_seconds=1.0)
            async with running_service(settings) as base_url, httpx.AsyncClient(base_url=base_url) as client:
                healthy = await poll_health(client, 200)
                assert healthy["status"] == "ok" and healthy["reasons"] == []
                assert healthy["connections"][0]["connected"] is True
                # Stalled until the test has seen the 503, however long that takes on a busy machine: a stall of a
                # fixed length could end before the first poll after it, and the 503 would never be seen.
                simulator.stall(STALL_UNTIL_ENDED)
                unhealthy = await poll_health(client, 503)
                assert unhealthy["status"] == "unavailable"
                codes = {reason["code"] for reason in unhealthy["reasons"]}
                assert codes & {"stalled", "disconnected"}, unhealthy
                assert all(reason["message"] for reason in unhealthy["reasons"])
                metrics = (await client.get("/metrics")).text
                assert "marketdata_healthy 0.0" in metrics
                assert 'marketdata_channel_depth{channel="ingest"}' in metrics
                simulator.stall(0.0)
                recovered = await poll_health(client, 200)
                assert recovered["reasons"] == []
                assert recovered["ticks_published"] > healthy["ticks_published"]


def trade(symbol: str, trade_id: int, price: str, offset_ms: int = 0) -> Tick:
    now_ms = time.time_ns() // 1_000_000 + offset_ms
    return Tick(symbol=symbol, price=Decimal(price), quantity=Decimal("0.01000000"), trade_time_ms=now_ms,
                event_time_ms=now_ms, trade_id=trade_id, is_buyer_maker=trade_id % 2 == 0)


async def wait_for(client: httpx.AsyncClient, path: str, predicate: Any) -> httpx.Response:
    while True:
        response = await client.get(path)
        if predicate(response):
            return response
        await trio.sleep(0.02)


async def test_symbols_are_added_and_removed_live_through_the_api() -> None:
    with trio.fail_after(30):
        source = ManualSource(symbols=("BTCUSDT", "ETHUSDT"))
        async with open_simulator(SimulatorConfig(source=source)) as simulator:
            settings = service_settings(simulator, ("BTCUSDT",))
            async with running_service(settings) as base_url, httpx.AsyncClient(base_url=base_url) as client:
                await simulator.wait_subscribed("btcusdt@trade")
                response = await client.post("/api/symbols", json={"symbol": "ethusdt"})
                assert response.status_code == 201, response.text
                assert response.json() == {"symbol": "ETHUSDT", "subscribed": True}
                assert [row["symbol"] for row in (await client.get("/api/symbols")).json()["symbols"]] == [
                    "BTCUSDT", "ETHUSDT"]
                await simulator.wait_subscribed("ethusdt@trade")
                assert simulator.open_connections == 1  # subscribed live, no second connection
                simulator.publish([trade("ETHUSDT", 500, "2683.80")])
                tick = (await wait_for(client, "/api/ticks/ETHUSDT", lambda r: r.status_code == 200)).json()
                assert tick["trade_id"] == 500 and tick["price"] == 2683.8

                conflict = await client.post("/api/symbols", json={"symbol": "ETHUSDT"})
                assert (conflict.status_code, conflict.json()["error"]["code"]) == (409, "already_subscribed")
                unknown = await client.post("/api/symbols", json={"symbol": "SOLUSDT"})
                assert (unknown.status_code, unknown.json()["error"]["code"]) == (422, "unknown_symbol")
                assert "SOLUSDT" in unknown.json()["error"]["message"]

                removed = await client.delete("/api/symbols/ethusdt")
                assert removed.status_code == 200 and removed.json() == {"symbol": "ETHUSDT", "subscribed": False}
                again = await client.delete("/api/symbols/ETHUSDT")
                assert (again.status_code, again.json()["error"]["code"]) == (404, "not_subscribed")
                gone = await client.get("/api/ticks/ETHUSDT")
                assert (gone.status_code, gone.json()["error"]["code"]) == (404, "unknown_symbol")
                assert "ETHUSDT" not in (await client.get("/api/ticks")).json()
                assert simulator.open_connections == 1


async def test_symbols_added_at_run_time_are_subscribed_again_after_a_restart(tmp_path: Path) -> None:
    with trio.fail_after(30):
        source = ManualSource(symbols=("BTCUSDT", "ETHUSDT", "XRPUSDT"))
        async with open_simulator(SimulatorConfig(source=source)) as simulator:
            settings = service_settings(
                simulator, ("BTCUSDT", "XRPUSDT"), database_url=f"sqlite:///{tmp_path / 'db.sqlite3'}"
            )
            async with running_service(settings) as base_url, httpx.AsyncClient(base_url=base_url) as client:
                assert (await client.post("/api/symbols", json={"symbol": "ETHUSDT"})).status_code == 201
                # A configured symbol removed at run time is not remembered: the configuration still wants it.
                assert (await client.delete("/api/symbols/XRPUSDT")).status_code == 200
                simulator.publish([trade("ETHUSDT", 500, "2683.80")])
                await wait_for(client, "/api/ticks/ETHUSDT", lambda r: r.status_code == 200)
            simulator.publish([trade("ETHUSDT", 501, "2684.10")])  # while the service is down
            async with running_service(settings) as base_url, httpx.AsyncClient(base_url=base_url) as client:
                symbols = [row["symbol"] for row in (await client.get("/api/symbols")).json()["symbols"]]
                assert symbols == ["BTCUSDT", "XRPUSDT", "ETHUSDT"]
                # Resumed from its stored trade id: the trade made while down is backfilled.
                tick = await wait_for(client, "/api/ticks/ETHUSDT", lambda r: r.json().get("trade_id") == 501)
                assert tick.json()["price"] == 2684.1
                assert (await client.delete("/api/symbols/ETHUSDT")).status_code == 200
            async with running_service(settings) as base_url, httpx.AsyncClient(base_url=base_url) as client:
                symbols = [row["symbol"] for row in (await client.get("/api/symbols")).json()["symbols"]]
                assert symbols == ["BTCUSDT", "XRPUSDT"]


async def test_feed_delivers_the_simulators_trades_exactly_and_candles_that_match_rest() -> None:
    with trio.fail_after(30):
        source = ManualSource(symbols=("BTCUSDT", "ETHUSDT"))
        async with open_simulator(SimulatorConfig(source=source)) as simulator:
            settings = service_settings(simulator, ("BTCUSDT", "ETHUSDT"))
            async with running_service(settings) as base_url, httpx.AsyncClient(base_url=base_url) as client:
                await simulator.wait_subscribed("ethusdt@trade")
                ws_url = base_url.replace("http://", "ws://") + "/ws"
                async with open_websocket_url(ws_url, disconnect_timeout=5) as ws:
                    await ws.send_message(json.dumps({"op": "subscribe", "channel": "ticks", "symbols": "*"}))
                    await ws.send_message(json.dumps(
                        {"op": "subscribe", "channel": "candles", "symbols": ["BTCUSDT"], "interval": "1m"}))
                    acks = [json.loads(await ws.get_message()) for _ in range(2)]
                    assert [ack["op"] for ack in acks] == ["subscribed", "subscribed"]
                    # Two minutes of BTC trades (the second minute's first trade closes the first candle), ETH too.
                    # They are dated ahead of the clock, so that no candle of theirs closes by time during the test.
                    base_ms = (time.time_ns() // 1_000_000 // 60_000 + 10) * 60_000
                    btc = [attrs.evolve(trade("BTCUSDT", 1000 + i, f"61000.{i:02d}"), trade_time_ms=base_ms + i * 6000,
                                        event_time_ms=base_ms + i * 6000 + 3) for i in range(12)]
                    eth = [trade("ETHUSDT", 70 + i, "2683.80") for i in range(5)]
                    simulator.publish(btc)
                    simulator.publish(eth)
                    ticks: list[Any] = []
                    candles: list[Any] = []
                    while len(ticks) < 17 or not any(c["closed"] for c in candles):
                        message = json.loads(await ws.get_message(), parse_float=Decimal)
                        (ticks if message["channel"] == "ticks" else candles).extend(message["data"])
                rest = json.loads((await client.get("/api/candles/BTCUSDT?interval=1m")).text, parse_float=Decimal)
    assert [(t["symbol"], t["trade_id"]) for t in ticks] == [(t.symbol, t.trade_id) for t in [*btc, *eth]]
    assert [t["price"] for t in ticks[:12]] == [t.price for t in btc]
    closed = [c for c in candles if c["closed"]]
    assert len(closed) == 1 and closed[0]["trade_count"] == 10
    assert closed[0] == rest[0]
    assert rest[-1]["closed"] is False and rest[-1]["trade_count"] == 2


async def test_a_feed_subscriber_is_told_of_trades_lost_for_good_and_the_stream_goes_on(simulator: Simulator) -> None:
    # REST bans the service (418): the trades missed during a reconnect cannot be fetched.
    banned = rest_server("418 I'm a teapot", {"Retry-After": "7200", "Content-Type": "application/json"},
                         b'{"code":-1003,"msg":"Way too much request weight used; IP banned until 1723170000000."}')
    with trio.fail_after(20):
        async with banned as rest_url:
            settings = service_settings(simulator, ("BTCUSDT",), binance_rest_url=rest_url)
            async with running_service(settings) as base_url, \
                    open_websocket_url(base_url.replace("http://", "ws://") + "/ws") as ws:
                await ws.send_message(json.dumps({"op": "subscribe", "channel": "ticks", "symbols": ["BTCUSDT"]}))
                assert json.loads(await ws.get_message())["op"] == "subscribed"
                await simulator.wait_subscribed("btcusdt@trade")
                simulator.publish(make_ticks("BTCUSDT", 1, 5))
                trade_ids: list[int] = []
                gaps: list[dict[str, Any]] = []
                while len(trade_ids) < 5:
                    trade_ids += [tick["trade_id"] for tick in json.loads(await ws.get_message())["data"]]
                simulator.reset_connections()
                simulator.publish(make_ticks("BTCUSDT", 6, 20))
                await simulator.wait_accepted(2)
                await simulator.wait_subscribed("btcusdt@trade")
                simulator.publish(make_ticks("BTCUSDT", 26, 3))
                while 28 not in trade_ids:
                    message = json.loads(await ws.get_message())
                    if message.get("op") == "gap":
                        gaps.append(message)
                    else:
                        trade_ids += [tick["trade_id"] for tick in message["data"]]
    assert trade_ids == [1, 2, 3, 4, 5, 26, 27, 28]
    [gap] = gaps
    assert (gap["symbol"], gap["first_trade_id"], gap["last_trade_id"]) == ("BTCUSDT", 6, 25)
    assert "418" in gap["reason"]
