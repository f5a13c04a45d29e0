"""The simulator's WebSocket side, driven by an independent client (trio-websocket), as Binance spot behaves."""

from __future__ import annotations

from decimal import Decimal

import httpx
import orjson
import pytest
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection
from ws_client import open_websocket_client

from app.convert import parse_trade_frame
from app.model import Tick
from app.replay.config import Limits, ManualSource, SimulatorConfig
from app.replay.simulator import Simulator, open_simulator


def make_tick(trade_id: int = 3735683259, symbol: str = "BTCUSDT", price: str = "61837.63000000",
              quantity: str = "0.02000000", time_ms: int = 1723161255342, maker: bool = True) -> Tick:
    return Tick(symbol=symbol, price=Decimal(price), quantity=Decimal(quantity), trade_time_ms=time_ms,
                event_time_ms=time_ms + 1, trade_id=trade_id, is_buyer_maker=maker)


BINANCE_FRAME = (
    '{"stream":"btcusdt@trade","data":{"e":"trade","E":1723161255343,"s":"BTCUSDT","t":3735683259,'
    '"p":"61837.63000000","q":"0.02000000","T":1723161255342,"m":true,"M":true}}'
)


def relaxed() -> SimulatorConfig:
    """Binance's limits except the message rate, for tests that send many requests on one connection."""
    return SimulatorConfig(source=ManualSource(symbols=("BTCUSDT", "ETHUSDT")),
                           limits=Limits(max_incoming_per_second=1000))


async def request(socket: WebSocketConnection, body: object) -> object:
    await socket.send_message(body if isinstance(body, str) else orjson.dumps(body).decode())
    return orjson.loads(await socket.get_message())


async def test_combined_stream_sends_binance_trade_frames(simulator: Simulator) -> None:
    with trio.fail_after(5):
        async with open_websocket_client(simulator.stream_url("btcusdt@trade")) as socket:
            await simulator.wait_subscribed("btcusdt@trade")
            simulator.publish([make_tick(symbol="ETHUSDT"), make_tick()])
            # Only the subscribed stream arrives, byte for byte in Binance's layout.
            assert await socket.get_message() == BINANCE_FRAME


async def test_raw_stream_path_sends_payload_only(simulator: Simulator) -> None:
    with trio.fail_after(5):
        async with open_websocket_client(f"{simulator.ws_url}/btcusdt@trade") as socket:
            await simulator.wait_subscribed("btcusdt@trade")
            simulator.publish([make_tick()])
            message = await socket.get_message()
            assert message == BINANCE_FRAME[len('{"stream":"btcusdt@trade","data":') : -1]
            assert parse_trade_frame(message) == make_tick()


async def test_subscribe_list_unsubscribe_on_bare_ws(simulator: Simulator) -> None:
    with trio.fail_after(5):
        async with open_websocket_client(simulator.ws_url) as socket:
            assert await request(socket, {"method": "SUBSCRIBE", "params": ["btcusdt@trade"], "id": 1}) == {
                "result": None, "id": 1}
            assert await request(socket, {"method": "LIST_SUBSCRIPTIONS", "id": 3}) == {
                "result": ["btcusdt@trade"], "id": 3}
            simulator.publish([make_tick(1)])
            assert parse_trade_frame(await socket.get_message()).trade_id == 1
            assert await request(socket, {"method": "UNSUBSCRIBE", "params": ["btcusdt@trade"], "id": 4}) == {
                "result": None, "id": 4}
            simulator.publish([make_tick(2)])
            # Frames keep their order: an undelivered trade would arrive before this answer.
            assert await request(socket, {"method": "LIST_SUBSCRIPTIONS", "id": "last"}) == {
                "result": [], "id": "last"}


@pytest.mark.parametrize("request_id", [0, 2**63 - 1, "a" * 36, None])
async def test_request_ids_binance_accepts(request_id: object) -> None:
    with trio.fail_after(5):
        async with open_simulator(relaxed()) as sim, open_websocket_client(sim.ws_url) as socket:
            answer = await request(socket, {"method": "LIST_SUBSCRIPTIONS", "id": request_id})
            assert answer == {"result": [], "id": request_id}


@pytest.mark.parametrize(
    ("body", "code", "answer_id"),
    [
        ("{not json", 3, None),
        ('{"method": "SUBSCRIBE", "params": ["btcusdt@trade"], "id": 1.5}', 2, None),
        ('{"method": "SUBSCRIBE", "params": ["btcusdt@trade"], "id": "' + "x" * 37 + '"}', 2, None),
        ('{"method": "SUBSCRIBE", "params": ["btcusdt@trade"], "id": -1}', 2, None),
        ('{"method": "FETCH", "params": [], "id": 7}', 2, 7),
        ('{"params": [], "id": 8}', 2, 8),
        ('{"method": "SUBSCRIBE", "params": "btcusdt@trade", "id": 9}', 2, 9),
        ('{"method": "SUBSCRIBE", "params": [42], "id": 10}', 2, 10),
        ('{"method": "SUBSCRIBE", "params": ["BTCUSDT@TRADE"], "id": 11}', 2, 11),
        ('{"method": "SET_PROPERTY", "params": ["combined", "yes"], "id": 12}', 1, 12),
        ('{"method": "GET_PROPERTY", "params": ["colour"], "id": 13}', 0, 13),
        ('{"method": "SET_PROPERTY", "params": [5, true], "id": 14}', 2, 14),
        ('[1, 2]', 2, None),
    ],
)
async def test_bad_requests_get_binance_error_objects(body: str, code: int, answer_id: object) -> None:
    with trio.fail_after(5):
        async with open_simulator(relaxed()) as sim, open_websocket_client(sim.ws_url) as socket:
            answer = await request(socket, body)
            assert isinstance(answer, dict)
            assert answer["id"] == answer_id
            assert answer["error"]["code"] == code
            assert isinstance(answer["error"]["msg"], str) and answer["error"]["msg"]
            # The connection stays usable after an error.
            assert await request(socket, {"method": "LIST_SUBSCRIPTIONS", "id": 1}) == {"result": [], "id": 1}


async def test_set_property_combined_switches_payload_layout(simulator: Simulator) -> None:
    with trio.fail_after(5):
        async with open_websocket_client(f"{simulator.ws_url}/btcusdt@trade") as socket:
            assert await request(socket, {"method": "GET_PROPERTY", "params": ["combined"], "id": 1}) == {
                "result": False, "id": 1}
            assert await request(socket, {"method": "SET_PROPERTY", "params": ["combined", True], "id": 2}) == {
                "result": None, "id": 2}
            simulator.publish([make_tick()])
            assert await socket.get_message() == BINANCE_FRAME


async def test_more_than_five_messages_a_second_closes_with_1008(simulator: Simulator) -> None:
    with trio.fail_after(5):
        async with open_websocket_client(simulator.ws_url) as socket:
            for request_id in range(6):
                await socket.send_message(orjson.dumps({"method": "LIST_SUBSCRIPTIONS", "id": request_id}).decode())
            answers = []
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    answers.append(orjson.loads(await socket.get_message()))
            assert [answer["id"] for answer in answers] == [0, 1, 2, 3, 4]
            assert closed.value.reason is not None
            assert (closed.value.reason.code, closed.value.reason.reason) == (1008, "Too many requests")
    assert simulator.stats.rate_limit_closes == 1


async def test_four_messages_a_second_stay_within_the_limit(autojump_clock: trio.abc.Clock) -> None:
    with trio.fail_after(60):
        async with open_simulator() as sim, open_websocket_client(sim.ws_url) as socket:
            for request_id in range(12):
                assert await request(socket, {"method": "LIST_SUBSCRIPTIONS", "id": request_id}) == {
                    "result": [], "id": request_id}
                await trio.sleep(0.25)
            assert sim.stats.control_messages == 12
            assert sim.stats.rate_limit_closes == 0


async def test_streams_in_the_url_count_towards_1024() -> None:
    streams = [f"s{index:04d}usdt@trade" for index in range(1025)]
    with trio.fail_after(10):
        async with open_simulator() as sim:
            async with open_websocket_client(sim.stream_url(*streams[:1024])) as socket:
                await sim.wait_subscribed(streams[1023])
                answer = await request(socket, {"method": "LIST_SUBSCRIPTIONS", "id": 1})
                assert isinstance(answer, dict) and len(answer["result"]) == 1024
            async with open_websocket_client(sim.stream_url(*streams)) as socket:
                with pytest.raises(ConnectionClosed) as closed:
                    await socket.get_message()
                assert closed.value.reason is not None
                assert closed.value.reason.code == 1008


async def test_subscribing_beyond_1024_streams_is_an_error_and_a_close(simulator: Simulator) -> None:
    streams = [f"s{index:04d}usdt@trade" for index in range(1025)]
    with trio.fail_after(10):
        async with open_websocket_client(simulator.ws_url) as socket:
            assert await request(socket, {"method": "SUBSCRIBE", "params": streams[:1000], "id": 1}) == {
                "result": None, "id": 1}
            answer = await request(socket, {"method": "SUBSCRIBE", "params": streams[1000:], "id": 2})
            assert answer == {"error": {"code": 4, "msg": "Too many subscriptions"}, "id": 2}
            with pytest.raises(ConnectionClosed) as closed:
                await socket.get_message()
            assert closed.value.reason is not None
            assert (closed.value.reason.code, closed.value.reason.reason) == (1008, "Too many subscriptions")


async def test_time_unit_microsecond_scales_trade_times(simulator: Simulator) -> None:
    with trio.fail_after(5):
        url = simulator.stream_url("btcusdt@trade") + "&timeUnit=MICROSECOND"
        async with open_websocket_client(url) as socket:
            await simulator.wait_subscribed("btcusdt@trade")
            simulator.publish([make_tick()])
            data = orjson.loads(await socket.get_message())["data"]
            assert (data["T"], data["E"]) == (1723161255342000, 1723161255343000)


async def test_unknown_path_is_rejected_in_the_handshake(simulator: Simulator) -> None:
    upgrade = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
    with trio.fail_after(5):
        async with httpx.AsyncClient() as client:
            response = await client.get(f"http://127.0.0.1:{simulator.ws_port}/api/v3/trades", headers=upgrade)
    assert response.status_code == 404
    assert simulator.stats.connections_rejected == 1


async def test_server_shutdown_event_reaches_every_connection(simulator: Simulator) -> None:
    with trio.fail_after(5):
        async with open_websocket_client(simulator.stream_url("btcusdt@trade")) as combined, \
                open_websocket_client(simulator.ws_url) as raw:
            await simulator.wait_connections(2)
            simulator.server_shutdown()
            event = orjson.loads(await combined.get_message())
            assert event["stream"] == "!serverShutdown"
            assert event["data"]["e"] == "serverShutdown"
            assert orjson.loads(await raw.get_message())["e"] == "serverShutdown"


async def test_server_pings_every_20_s_and_client_pongs_keep_it_open(autojump_clock: trio.abc.Clock) -> None:
    with trio.fail_after(600):
        async with open_simulator() as sim, open_websocket_client(sim.ws_url) as socket:
            await trio.sleep(210)  # virtual time: ten pings, each answered by trio-websocket's automatic pong
            assert sim.stats.pongs_received == 10
            assert await request(socket, {"method": "LIST_SUBSCRIPTIONS", "id": 1}) == {"result": [], "id": 1}


async def test_counters_report_connections(simulator: Simulator) -> None:
    with trio.fail_after(5):
        async with open_websocket_client(simulator.ws_url):
            await simulator.wait_connections(1)
            assert simulator.open_connections == 1
        await simulator.wait_connections(0)
        assert simulator.stats.connections_accepted == 1
        async with open_websocket_client(simulator.ws_url):
            await simulator.wait_accepted(2)
            assert simulator.open_connections == 1


async def test_raw_path_takes_several_streams(simulator: Simulator) -> None:
    with trio.fail_after(5):
        async with open_websocket_client(f"{simulator.ws_url}/btcusdt@trade/ethusdt@trade") as socket:
            await simulator.wait_subscribed("ethusdt@trade")
            simulator.publish([make_tick(1, symbol="ETHUSDT"), make_tick(2)])
            assert [parse_trade_frame(await socket.get_message()).symbol for _ in range(2)] == ["ETHUSDT", "BTCUSDT"]


async def test_connection_attempts_beyond_the_limit_are_refused_with_429() -> None:
    upgrade = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
    config = SimulatorConfig(limits=Limits(max_connection_attempts=2))
    with trio.fail_after(10):
        async with open_simulator(config) as sim:
            for _ in range(2):
                async with open_websocket_client(sim.ws_url):
                    pass
            async with httpx.AsyncClient() as client:
                refused = await client.get(f"http://127.0.0.1:{sim.ws_port}/ws", headers=upgrade)
    assert refused.status_code == 429
