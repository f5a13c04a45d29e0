"""How many /ws clients the service serves: MAX_WS_CLIENTS, and 1,000 subscribers all receiving."""

from __future__ import annotations

import json
from contextlib import AsyncExitStack

import httpx
import pytest
import trio
from trio_websocket import ConnectionRejected, WebSocketConnection, open_websocket_url
from web_harness import make_ticks, running_web, wait_until
from ws_client import open_websocket_client

from app.web.client_limit import ClientLimit
from app.web.open_files import raise_open_file_limit


def metric(text: str, name: str) -> float:
    values = [float(line.split()[-1]) for line in text.splitlines() if line.startswith(f"{name} ")]
    assert len(values) == 1, (name, text)
    return values[0]


async def test_beyond_max_ws_clients_a_client_is_refused_before_the_upgrade_with_503() -> None:
    clients = ClientLimit(limit=3)
    with trio.fail_after(30):
        async with running_web(ws_clients=clients) as web, httpx.AsyncClient(base_url=web.base_url) as http:
            async with open_websocket_client(web.ws_url) as first, open_websocket_client(web.ws_url), \
                    open_websocket_client(web.ws_url):
                with pytest.raises(ConnectionRejected) as refused:
                    async with open_websocket_url(web.ws_url):
                        pass
                # The admitted clients are served as before.
                await first.send_message('{"op": "ping"}')
                assert json.loads(await first.get_message()) == {"op": "pong"}
                metrics = (await http.get("/metrics")).text
            await wait_until(lambda: clients.current == 0)
            # Places are given back: a new client is served again.
            async with open_websocket_client(web.ws_url) as again:
                await again.send_message('{"op": "ping"}')
                assert json.loads(await again.get_message()) == {"op": "pong"}
    assert refused.value.status_code == 503
    assert (b"content-type", b"application/json") in refused.value.headers
    assert refused.value.body is not None
    error = json.loads(refused.value.body)["error"]
    assert error["code"] == "too_many_clients" and "MAX_WS_CLIENTS" in error["message"]
    assert metric(metrics, "marketdata_websocket_clients") == 3
    assert metric(metrics, "marketdata_websocket_clients_limit") == 3
    assert metric(metrics, "marketdata_websocket_clients_refused_total") == 1
    assert clients.refused == 1


SUBSCRIBERS = 1_000
TICKS = 20
HANDSHAKES_AT_ONCE = 50


@pytest.mark.slow
async def test_a_thousand_subscribers_each_receive_every_tick() -> None:
    # Both ends of every connection are in this process: two files per client.
    if raise_open_file_limit(2 * SUBSCRIBERS) < 2 * SUBSCRIBERS:
        pytest.skip("the open-file limit cannot hold both ends of 1,000 connections")
    received: dict[int, list[int]] = {}
    subscribed = trio.Event()
    with trio.fail_after(180):
        async with running_web(ws_clients=ClientLimit(limit=SUBSCRIBERS)) as web, trio.open_nursery() as clients:
            ticks = make_ticks("BTCUSDT", 1, TICKS)
            acks = 0
            # Handshakes a few at a time, as clients arrive; once subscribed, all 1,000 are served together.
            handshakes = trio.CapacityLimiter(HANDSHAKES_AT_ONCE)

            async def subscriber(number: int) -> None:
                nonlocal acks
                async with AsyncExitStack() as stack:
                    async with handshakes:
                        ws = await stack.enter_async_context(open_websocket_client(web.ws_url))
                        await ws.send_message('{"op": "subscribe", "channel": "ticks", "symbols": ["BTCUSDT"]}')
                        assert json.loads(await ws.get_message())["op"] == "subscribed"
                    acks += 1
                    if acks == SUBSCRIBERS:
                        subscribed.set()
                    received[number] = await _trade_ids(ws, TICKS)

            for number in range(SUBSCRIBERS):
                clients.start_soon(subscriber, number)
            await subscribed.wait()
            assert web.state.hub.subscriber_count >= SUBSCRIBERS
            await web.publish(ticks)
    expected = [tick.trade_id for tick in ticks]
    assert len(received) == SUBSCRIBERS
    assert all(ids == expected for ids in received.values())


async def _trade_ids(ws: WebSocketConnection, count: int) -> list[int]:
    ids: list[int] = []
    while len(ids) < count:
        message = json.loads(await ws.get_message())
        assert message["channel"] == "ticks", message
        ids.extend(tick["trade_id"] for tick in message["data"])
    return ids
