"""The WebSocket feed at /ws through real sockets: trio-websocket clients against Hypercorn on loopback."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import attrs
import httpx
import orjson
import pytest
import trio
import trio_websocket
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url
from web_harness import Harness, make_ticks, running_web, wait_until, web_settings

from app.client import open_feed
from app.convert import api_converter
from app.model import Gap
from app.web.feed import FeedLimits
from app.web.feed_render import RenderCache


def decode(message: str | bytes) -> Any:
    return json.loads(message, parse_float=Decimal)


async def send(ws: WebSocketConnection, message: object) -> None:
    await ws.send_message(json.dumps(message))


async def request(ws: WebSocketConnection, message: object) -> Any:
    await send(ws, message)
    return decode(await ws.get_message())


async def receive_ticks(ws: WebSocketConnection, count: int) -> tuple[list[Any], int]:
    """Data frames until ``count`` ticks arrived: (ticks, frames)."""
    ticks: list[Any] = []
    frames = 0
    while len(ticks) < count:
        message = decode(await ws.get_message())
        assert message["channel"] == "ticks", message
        ticks.extend(message["data"])
        frames += 1
    return ticks, frames


async def assert_quiet(ws: WebSocketConnection) -> None:
    """Nothing but the pong comes back: a ping round trip proves no data frame was pending before it."""
    assert await request(ws, {"op": "ping", "id": "quiet?"}) == {"op": "pong", "id": "quiet?"}


async def test_subscribe_ticks_acks_then_streams_that_symbol_only_in_order() -> None:
    with trio.fail_after(20):
        async with running_web() as web, open_websocket_url(web.ws_url, disconnect_timeout=5) as ws:
            ack = await request(ws, {"op": "subscribe", "channel": "ticks", "symbols": ["btcusdt"], "id": 1})
            assert ack == {"op": "subscribed", "channel": "ticks", "symbols": ["BTCUSDT"], "id": 1}
            btc = make_ticks("BTCUSDT", 500, 50)
            await web.publish(make_ticks("ETHUSDT", 10, 20, price="2683.80"))
            await web.publish(btc)
            ticks, _ = await receive_ticks(ws, 50)
            await assert_quiet(ws)
    assert [tick["trade_id"] for tick in ticks] == list(range(500, 550))
    assert ticks[0] == {
        "symbol": "BTCUSDT", "price": btc[0].price, "quantity": btc[0].quantity,
        "timestamp": "2024-08-08T23:55:00.000+00:00", "event_time": "2024-08-08T23:55:00.001+00:00",
        "trade_id": 500, "is_buyer_maker": True,
    }


async def test_star_subscribes_every_symbol_and_unsubscribe_stops_the_data() -> None:
    with trio.fail_after(20):
        async with running_web() as web, open_websocket_url(web.ws_url, disconnect_timeout=5) as ws:
            assert (await request(ws, {"op": "subscribe", "channel": "ticks", "symbols": "*"}))["symbols"] == ["*"]
            await web.publish([*make_ticks("BTCUSDT", 1, 3), *make_ticks("ETHUSDT", 1, 3, price="2683.80")])
            ticks, _ = await receive_ticks(ws, 6)
            assert [(tick["symbol"], tick["trade_id"]) for tick in ticks] == [
                ("BTCUSDT", 1), ("BTCUSDT", 2), ("BTCUSDT", 3), ("ETHUSDT", 1), ("ETHUSDT", 2), ("ETHUSDT", 3)]
            ack = await request(ws, {"op": "unsubscribe", "channel": "ticks", "symbols": ["*"]})
            assert ack == {"op": "unsubscribed", "channel": "ticks", "symbols": ["*"]}
            await web.publish_and_settle(make_ticks("BTCUSDT", 4, 3))
            await assert_quiet(ws)
            assert web.state.hub.subscriber_count == 1  # only the harness's candle builder


async def test_changing_the_symbol_set_loses_and_repeats_nothing() -> None:
    with trio.fail_after(20):
        async with running_web() as web, open_websocket_url(web.ws_url, disconnect_timeout=5) as ws:
            await request(ws, {"op": "subscribe", "channel": "ticks", "symbols": ["BTCUSDT"]})
            await web.publish(make_ticks("BTCUSDT", 1, 100))
            # Subscribe more while BTC ticks are in flight: every BTC tick still arrives once, in order.
            await send(ws, {"op": "subscribe", "channel": "ticks", "symbols": ["ETHUSDT"]})
            await web.publish(make_ticks("BTCUSDT", 101, 100))
            received: list[Any] = []
            acks = 0

            async def read_until(done: Callable[[], bool]) -> None:
                nonlocal acks
                while not done():
                    message = decode(await ws.get_message())
                    if message.get("op") == "subscribed":
                        acks += 1
                        continue
                    received.extend(message["data"])

            await read_until(lambda: acks == 1)  # ETH ticks count from the ack on
            await web.publish(make_ticks("ETHUSDT", 1, 10, price="2683.80"))
            await read_until(lambda: len(received) == 210)
            await assert_quiet(ws)
    assert acks == 1
    btc = [tick["trade_id"] for tick in received if tick["symbol"] == "BTCUSDT"]
    eth = [tick["trade_id"] for tick in received if tick["symbol"] == "ETHUSDT"]
    assert btc == list(range(1, 201))
    assert eth == list(range(1, 11))


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ("{oops", "invalid_json"),
        ("[1, 2]", "invalid_message"),
        ('"subscribe"', "invalid_message"),
        ('{"op": "shout"}', "unknown_op"),
        ('{"channel": "ticks", "symbols": "*"}', "unknown_op"),
        ('{"op": "subscribe", "channel": "trades", "symbols": "*"}', "unknown_channel"),
        ('{"op": "subscribe", "channel": "ticks"}', "invalid_symbols"),
        ('{"op": "subscribe", "channel": "ticks", "symbols": []}', "invalid_symbols"),
        ('{"op": "subscribe", "channel": "ticks", "symbols": "BTCUSDT"}', "invalid_symbols"),
        ('{"op": "subscribe", "channel": "ticks", "symbols": [7]}', "invalid_symbols"),
        ('{"op": "subscribe", "channel": "ticks", "symbols": ["BTC-USDT"]}', "invalid_symbols"),
        ('{"op": "subscribe", "channel": "ticks", "symbols": ["SOLUSDT"]}', "unknown_symbol"),
        ('{"op": "subscribe", "channel": "ticks", "symbols": ["*"], "interval": "1m"}', "invalid_message"),
        ('{"op": "subscribe", "channel": "ticks", "symbols": ["*"], "depth": 5}', "invalid_message"),
        ('{"op": "subscribe", "channel": "ticks", "symbols": ["*"], "id": [1]}', "invalid_message"),
        ('{"op": "subscribe", "channel": "candles", "symbols": ["BTCUSDT"]}', "unknown_interval"),
        ('{"op": "subscribe", "channel": "candles", "symbols": ["BTCUSDT"], "interval": "7m"}', "unknown_interval"),
        ('{"op": "subscribe", "channel": "candles", "symbols": ["BTCUSDT"], "interval": "1h"}', "unknown_interval"),
    ],
)
async def test_bad_messages_get_an_error_and_the_connection_stays_open(message: str, code: str) -> None:
    with trio.fail_after(20):
        async with running_web() as web, open_websocket_url(web.ws_url, disconnect_timeout=5) as ws:
            await ws.send_message(message)
            reply = decode(await ws.get_message())
            assert reply["op"] == "error" and reply["code"] == code, reply
            assert reply["message"]
            # Still open and working.
            ack = await request(ws, {"op": "subscribe", "channel": "ticks", "symbols": ["BTCUSDT"]})
            assert ack["op"] == "subscribed"


async def test_binary_frames_and_unsubscribing_one_symbol_from_star_are_refused() -> None:
    with trio.fail_after(20):
        async with running_web() as web, open_websocket_url(web.ws_url, disconnect_timeout=5) as ws:
            await ws.send_message(b'{"op": "ping"}')
            assert decode(await ws.get_message())["code"] == "invalid_message"
            await request(ws, {"op": "subscribe", "channel": "ticks", "symbols": "*"})
            reply = await request(ws, {"op": "unsubscribe", "channel": "ticks", "symbols": ["BTCUSDT"], "id": "u1"})
            assert (reply["op"], reply["code"], reply["id"]) == ("error", "invalid_request", "u1")


async def test_pending_ticks_are_coalesced_into_few_frames() -> None:
    with trio.fail_after(30):
        async with running_web() as web, open_websocket_url(web.ws_url, disconnect_timeout=5) as ws:
            await request(ws, {"op": "subscribe", "channel": "ticks", "symbols": "*"})
            # Published faster than one frame per tick could go out: frames carry many ticks each.
            await web.publish(make_ticks("BTCUSDT", 1, 20_000))
            ticks, frames = await receive_ticks(ws, 20_000)
            await assert_quiet(ws)
    assert [tick["trade_id"] for tick in ticks] == list(range(1, 20_001))
    assert frames < 2_000, frames


async def metric(client: httpx.AsyncClient, line_prefix: str) -> float:
    text = (await client.get("/metrics")).text
    for line in text.splitlines():
        if line.startswith(line_prefix + " "):
            return float(line.split()[-1])
    raise AssertionError(f"no {line_prefix} in metrics:\n{text}")


async def open_slow_client(nursery: trio.Nursery, web: Harness) -> WebSocketConnection:
    """A client with a tiny receive window that does not read: the server's sends soon block."""
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    host, port = web.base_url.removeprefix("http://").split(":")
    await sock.connect((host, int(port)))
    stream = trio.SocketStream(sock)
    return await trio_websocket.wrap_client_stream(nursery, stream, host, "/ws", message_queue_size=1)


async def test_a_client_that_cannot_keep_up_is_cut_off_with_1013_and_others_get_everything() -> None:
    limits = FeedLimits(max_pending=5_000, close_timeout_seconds=10)
    with trio.fail_after(60):
        async with running_web(feed_limits=limits) as web, httpx.AsyncClient(base_url=web.base_url) as client:
            async with trio.open_nursery() as nursery, open_websocket_url(web.ws_url, disconnect_timeout=5) as fast:
                slow = await open_slow_client(nursery, web)
                for ws in (slow, fast):
                    await request(ws, {"op": "subscribe", "channel": "ticks", "symbols": "*"})
                received: list[Any] = []

                async def read_fast() -> None:
                    while True:
                        message = decode(await fast.get_message())
                        received.extend(tick["trade_id"] for tick in message["data"])

                nursery.start_soon(read_fast)
                published = 0
                # Publish until the slow client is cut off (bounded: 500 bursts of 500 ticks). The fast client
                # has every burst before the next one, so it is never more than 500 ticks behind, on any machine.
                for _ in range(500):
                    await web.publish_and_settle(make_ticks("BTCUSDT", published + 1, 500))
                    published += 500
                    await wait_until(lambda count=published: len(received) >= count)
                    # The hub cuts it off (its backlog passed max_pending) while its sender is still stuck in a
                    # send; the session says so (stage "websocket") once that send returns.
                    if await metric(client, 'marketdata_subscribers_cut_off_total{stage="ticks"}') >= 1:
                        break
                else:
                    raise AssertionError("the slow client was never cut off")
                # The slow client now reads what reached it, then the close frame with the reason.
                slow_ticks = 0
                with pytest.raises(ConnectionClosed) as closed:
                    while True:
                        slow_ticks += len(decode(await slow.get_message())["data"])
                assert closed.value.reason.code == 1013
                assert "fell behind" in (closed.value.reason.reason or "")
                assert 0 < slow_ticks < published
                # The fast client got every tick, in order, cut-off or not.
                await wait_until(lambda: len(received) >= published)
                assert received == list(range(1, published + 1))
                assert await metric(client, "marketdata_websocket_connections") == 1
                assert await metric(client, 'marketdata_subscribers_cut_off_total{stage="websocket"}') == 1
                nursery.cancel_scope.cancel()


async def test_idle_connections_cost_no_hub_subscription() -> None:
    with trio.fail_after(60):
        async with running_web() as web, httpx.AsyncClient(base_url=web.base_url) as client:
            async with trio.open_nursery() as nursery:
                clients = [await trio_websocket.connect_websocket_url(nursery, web.ws_url) for _ in range(300)]
                assert await request(clients[-1], {"op": "ping"}) == {"op": "pong"}
                assert await metric(client, "marketdata_websocket_connections") == 300
                assert web.state.hub.subscriber_count == 1  # the candle builder only
                await web.publish_and_settle(make_ticks("BTCUSDT", 1, 1000))
                for ws in clients:
                    await ws.aclose()
                nursery.cancel_scope.cancel()


async def receive_candles(ws: WebSocketConnection, until: Any) -> list[Any]:
    """Candle updates until ``until(update)`` holds for one; every update received, in order."""
    updates: list[Any] = []
    while True:
        message = decode(await ws.get_message())
        assert message["channel"] == "candles", message
        updates.extend(message["data"])
        if any(until(update) for update in message["data"]):
            return updates


async def test_candle_subscription_sends_the_open_candle_then_updates_and_closed_candles() -> None:
    with trio.fail_after(20):
        async with running_web() as web, open_websocket_url(web.ws_url, disconnect_timeout=5) as ws:
            first_minute = make_ticks("BTCUSDT", 1, 3, step_ms=10_000)
            await web.publish_and_settle(first_minute)
            ack = await request(ws, {"op": "subscribe", "channel": "candles", "symbols": ["BTCUSDT"],
                                     "interval": "1m"})
            assert ack == {"op": "subscribed", "channel": "candles", "symbols": ["BTCUSDT"], "interval": "1m"}
            snapshot = decode(await ws.get_message())
            assert snapshot["channel"] == "candles" and snapshot["interval"] == "1m"
            assert [(c["trade_count"], c["closed"]) for c in snapshot["data"]] == [(3, False)]
            # A trade in the next minute closes the first candle and opens the next.
            await web.publish(make_ticks("BTCUSDT", 4, 1, start_ms=first_minute[0].trade_time_ms + 60_000))
            await web.publish(make_ticks("ETHUSDT", 1, 1, price="2683.80"))  # not subscribed
            updates = await receive_candles(ws, lambda candle: candle["first_trade_id"] == 4)
            await assert_quiet(ws)
    closed = [candle for candle in updates if candle["closed"]]
    assert len(closed) == 1
    assert (closed[0]["first_trade_id"], closed[0]["last_trade_id"], closed[0]["trade_count"]) == (1, 3, 3)
    assert closed[0]["volume"] == sum(tick.quantity for tick in first_minute)
    assert updates[-1]["closed"] is False and updates[-1]["trade_count"] == 1
    assert {candle["symbol"] for candle in updates} == {"BTCUSDT"}
    assert {candle["interval"] for candle in updates} == {"1m"}


async def test_candles_of_several_intervals_come_in_separate_frames_and_unsubscribe_per_interval() -> None:
    with trio.fail_after(20):
        async with running_web() as web, open_websocket_url(web.ws_url, disconnect_timeout=5) as ws:
            for interval in ("1m", "5m"):
                await request(ws, {"op": "subscribe", "channel": "candles", "symbols": "*", "interval": interval})
            await web.publish(make_ticks("ETHUSDT", 1, 2, price="2683.80"))
            seen: dict[str, int] = {}
            while set(seen) != {"1m", "5m"}:
                message = decode(await ws.get_message())
                assert {candle["interval"] for candle in message["data"]} == {message["interval"]}
                seen[message["interval"]] = message["data"][-1]["last_trade_id"]
            ack = await request(ws, {"op": "unsubscribe", "channel": "candles", "symbols": "*", "interval": "5m"})
            assert ack["op"] == "unsubscribed"
            for trade_id in (3, 4):
                await web.publish(make_ticks("ETHUSDT", trade_id, 1, price="2683.80"))
                updates = await receive_candles(ws, lambda candle, wanted=trade_id: candle["last_trade_id"] == wanted)
                assert {candle["interval"] for candle in updates} == {"1m"}
            await assert_quiet(ws)


def test_render_cache_renders_each_object_once_exactly_as_the_api_converter_and_stays_bounded() -> None:
    cache = RenderCache(capacity=100)
    ticks = make_ticks("BTCUSDT", 1, 150)
    first = cache.render(ticks[:50])
    again = cache.render(ticks[:50])
    assert (cache.renders, cache.hits) == (50, 50)
    assert [orjson.loads(orjson.dumps(f)) for f in again] == [orjson.loads(orjson.dumps(f)) for f in first]
    assert orjson.dumps(first) == orjson.dumps(api_converter.unstructure(ticks[:50]))
    # An equal but distinct object is rendered on its own (identity, not equality, is the key).
    copy = attrs.evolve(ticks[0])
    cache.render([copy])
    assert cache.renders == 51
    cache.render(ticks[50:])
    assert len(cache._rendered) <= 100


def test_render_cache_keeps_an_object_for_at_least_capacity_newer_renders() -> None:
    # A client lagging behind the fastest by up to ``capacity`` objects finds them all rendered already.
    cache = RenderCache(capacity=100)
    ticks = make_ticks("BTCUSDT", 1, 400)
    for start in range(0, 400, 10):
        cache.render(ticks[start : start + 10])
        lagging = max(0, start + 10 - 100)
        renders = cache.renders
        cache.render(ticks[lagging : start + 10])
        assert cache.renders == renders
    assert len(cache._rendered) + len(cache._previous) <= 200


async def test_clients_are_told_going_away_when_ingestion_ends() -> None:
    with trio.fail_after(20):
        async with running_web() as web, open_websocket_url(web.ws_url, disconnect_timeout=5) as ws:
            await request(ws, {"op": "subscribe", "channel": "ticks", "symbols": "*"})
            await request(ws, {"op": "subscribe", "channel": "candles", "symbols": "*", "interval": "1m"})
            await web.publish(make_ticks("BTCUSDT", 1, 3))
            await web.ticks.aclose()  # ingestion ended: the hub and the candle feed close their subscribers
            received = 0
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    message = decode(await ws.get_message())
                    received += len(message["data"]) if message["channel"] == "ticks" else 0
    assert received == 3  # what was published before the end still arrives
    assert closed.value.reason.code == 1001
    assert "shutting down" in (closed.value.reason.reason or "")


async def test_long_or_odd_client_values_are_not_echoed_back_in_full() -> None:
    with trio.fail_after(20):
        async with running_web() as web, open_websocket_url(web.ws_url, disconnect_timeout=5) as ws:
            reply = await request(ws, {"op": "ping", "id": "x" * 65})
            assert reply["op"] == "error" and reply["code"] == "invalid_message" and "id" not in reply
            reply = await request(ws, {"op": "subscribe", "channel": "ticks", "symbols": "*", "id": True})
            assert reply["code"] == "invalid_message" and "id" not in reply
            reply = await request(ws, {"op": "y" * 50_000})
            assert reply["code"] == "unknown_op" and len(reply["message"]) < 400
            assert await request(ws, {"op": "ping", "id": 7}) == {"op": "pong", "id": 7}


async def test_an_oversized_client_message_closes_the_connection_with_1009() -> None:
    with trio.fail_after(20):
        async with running_web() as web, open_websocket_url(web.ws_url, disconnect_timeout=5) as ws:
            await ws.send_message(json.dumps({"op": "subscribe", "channel": "ticks", "symbols": ["A" * 100_000]}))
            with pytest.raises(ConnectionClosed) as closed:
                await ws.get_message()
    assert closed.value.reason.code == 1009


async def test_list_shows_the_current_subscriptions() -> None:
    with trio.fail_after(20):
        async with running_web() as web, open_websocket_url(web.ws_url, disconnect_timeout=5) as ws:
            assert await request(ws, {"op": "list"}) == {"op": "subscriptions", "ticks": [], "candles": {}}
            await request(ws, {"op": "subscribe", "channel": "ticks", "symbols": ["ETHUSDT", "BTCUSDT"]})
            await request(ws, {"op": "subscribe", "channel": "candles", "symbols": "*", "interval": "5m"})
            assert await request(ws, {"op": "list", "id": 3}) == {
                "op": "subscriptions", "ticks": ["BTCUSDT", "ETHUSDT"], "candles": {"5m": ["*"]}, "id": 3}


async def test_a_changed_symbol_set_keeps_one_hub_subscription_per_client() -> None:
    with trio.fail_after(20):
        async with running_web() as web, open_websocket_url(web.ws_url, disconnect_timeout=5) as ws:
            await request(ws, {"op": "subscribe", "channel": "ticks", "symbols": ["BTCUSDT"]})
            (subscriber,) = [s for s in web.state.hub.subscribers if s.name.startswith("ws:")]
            await request(ws, {"op": "subscribe", "channel": "ticks", "symbols": ["ETHUSDT"]})
            await request(ws, {"op": "unsubscribe", "channel": "ticks", "symbols": ["BTCUSDT"]})
            await web.publish(make_ticks("BTCUSDT", 1, 2))
            await web.publish(make_ticks("ETHUSDT", 1, 2, price="2683.80"))
            ticks, _ = await receive_ticks(ws, 2)
            await assert_quiet(ws)
            assert [s for s in web.state.hub.subscribers if s.name.startswith("ws:")] == [subscriber]
            assert subscriber.keys == frozenset({"ETHUSDT"})
    assert [(tick["symbol"], tick["trade_id"]) for tick in ticks] == [("ETHUSDT", 1), ("ETHUSDT", 2)]


async def test_subscriptions_beyond_the_per_connection_limit_are_refused_precisely_and_counted() -> None:
    settings = web_settings(max_subscriptions_per_connection=2)
    with trio.fail_after(20):
        async with running_web(settings) as web, httpx.AsyncClient(base_url=web.base_url) as client:
            async with open_websocket_url(web.ws_url, disconnect_timeout=5) as ws:
                await request(ws, {"op": "subscribe", "channel": "ticks", "symbols": ["BTCUSDT"]})
                reply = await request(ws, {"op": "subscribe", "channel": "candles", "symbols": ["BTCUSDT", "ETHUSDT"],
                                           "interval": "1m", "id": 5})
                assert (reply["op"], reply["code"], reply["id"]) == ("error", "too_many_subscriptions", 5)
                assert reply["message"] == ('at most 2 subscriptions per connection (one per symbol and channel, '
                                            '"*" counts one); this request would make 3')
                assert await request(ws, {"op": "list"}) == {"op": "subscriptions", "ticks": ["BTCUSDT"],
                                                             "candles": {}}
                ack = await request(ws, {"op": "subscribe", "channel": "candles", "symbols": "*", "interval": "1m"})
                assert ack["op"] == "subscribed"
                assert await metric(client, "marketdata_websocket_subscriptions") == 2
                assert await metric(client, "marketdata_websocket_subscriptions_refused_total") == 1
                assert await metric(client, "marketdata_websocket_max_subscriptions_per_connection") == 2
                await request(ws, {"op": "unsubscribe", "channel": "ticks", "symbols": "*"})
                assert await metric(client, "marketdata_websocket_subscriptions") == 1


async def test_an_unrepaired_gap_is_told_to_the_clients_subscribed_to_its_symbol() -> None:
    with trio.fail_after(20):
        async with running_web() as web, open_websocket_url(web.ws_url, disconnect_timeout=5) as btc_client, \
                open_websocket_url(web.ws_url, disconnect_timeout=5) as eth_client:
            await request(btc_client, {"op": "subscribe", "channel": "candles", "symbols": ["BTCUSDT"],
                                       "interval": "1m"})
            await request(eth_client, {"op": "subscribe", "channel": "ticks", "symbols": ["ETHUSDT"]})
            gap = Gap("BTCUSDT", 101, 250, "REST could not serve the missed trades", 1_723_161_300_000)
            web.state.ingest.symbol("BTCUSDT").record_gap(gap)
            told = decode(await btc_client.get_message())
            await assert_quiet(eth_client)
    assert told == {"op": "gap", **api_converter.unstructure(gap)}
    assert told["first_trade_id"] == 101 and told["last_trade_id"] == 250


async def test_the_python_feed_keeps_and_logs_the_gaps_it_is_told_and_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    with trio.fail_after(20):
        async with running_web() as web, open_feed(web.base_url, "ticks", ["BTCUSDT"]) as feed:
            gap = Gap("BTCUSDT", 101, 250, "REST could not serve the missed trades", 1_723_161_300_000)
            web.state.ingest.symbol("ETHUSDT").record_gap(attrs.evolve(gap, symbol="ETHUSDT"))  # not its symbol
            web.state.ingest.symbol("BTCUSDT").record_gap(gap)
            await wait_until(lambda: len(feed.gaps) == 1)
            await web.publish(make_ticks("BTCUSDT", 251, 2))
            received: list[int] = []
            async for batch in feed:
                received.extend(tick.trade_id for tick in batch)
                if len(received) >= 2:
                    break
    assert feed.gaps == (gap,) and received == [251, 252]
    assert "feed_gap symbol=BTCUSDT first_trade_id=101 last_trade_id=250" in caplog.text
