"""The simulator's WebSocket layer (``app/replay/websocket.py``, wsproto's public API over a Trio stream), driven
by a bare wsproto client (``RawClient``) over loopback: pings, fragments, the closing handshake, bad frames."""

from __future__ import annotations

import orjson
import trio
from raw_ws_client import RawClient
from wsproto.events import (
    CloseConnection,
    Ping,
    Pong,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

from app.replay.simulator import Simulator
from app.replay.websocket import MAX_MESSAGE_SIZE


async def test_a_ping_from_the_client_is_answered_with_its_payload(simulator: Simulator) -> None:
    with trio.fail_after(5):
        client = await RawClient.connect(simulator)
        await client.send(Ping(payload=b"are you there"))
        pong = await client.until(Pong)
        # The pong may arrive before the server counted the ping.
        await simulator.wait_until(lambda: simulator.stats.pings_received == 1)
    assert isinstance(pong, Pong)
    assert pong.payload == b"are you there"


async def test_a_request_in_several_fragments_is_one_message(simulator: Simulator) -> None:
    body = orjson.dumps({"method": "SUBSCRIBE", "params": ["btcusdt@trade"], "id": 7}).decode()
    with trio.fail_after(5):
        client = await RawClient.connect(simulator)
        await client.send(TextMessage(data=body[:10], message_finished=False), TextMessage(data=body[10:]))
        reply = await client.until(TextMessage)
    assert isinstance(reply, TextMessage)
    assert orjson.loads(reply.data) == {"result": None, "id": 7}
    assert simulator.stats.control_messages == 1


async def test_a_close_from_the_client_is_echoed_and_the_connection_ends(simulator: Simulator) -> None:
    with trio.fail_after(5):
        client = await RawClient.connect(simulator)
        await simulator.wait_connections(1)
        await client.send(CloseConnection(code=1000, reason="bye"))
        echo = await client.until(CloseConnection)
        assert await client.next_event() is None  # then the server closes the TCP stream
        await simulator.wait_connections(0)
    assert isinstance(echo, CloseConnection)
    assert echo.code == 1000


async def test_an_unmasked_frame_from_a_client_closes_with_1002(simulator: Simulator) -> None:
    with trio.fail_after(5):
        client = await RawClient.connect(simulator)
        await client.stream.send_all(b"\x81\x05hello")  # RFC 6455: a client must mask its frames
        close = await client.until(CloseConnection)
        await simulator.wait_connections(0)
    assert isinstance(close, CloseConnection)
    assert close.code == 1002


async def test_a_message_over_the_size_limit_closes_with_1009(simulator: Simulator) -> None:
    with trio.fail_after(10):
        client = await RawClient.connect(simulator)
        await client.send(TextMessage(data="x" * (MAX_MESSAGE_SIZE + 1)))
        close = await client.until(CloseConnection)
    assert isinstance(close, CloseConnection)
    assert close.code == 1009
    assert simulator.stats.control_messages == 0


async def test_a_plain_http_request_is_answered_400_and_closed(simulator: Simulator) -> None:
    with trio.fail_after(5):
        stream = await trio.open_tcp_stream("127.0.0.1", simulator.ws_port)
        await stream.send_all(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        response = b""
        while chunk := await stream.receive_some(65536):
            response += chunk
    assert response.startswith(b"HTTP/1.1 400 ")
    assert simulator.stats.connections_accepted == 0


async def test_a_rejected_upgrade_carries_its_status_and_body(simulator: Simulator) -> None:
    with trio.fail_after(5):
        client = RawClient(await trio.open_tcp_stream("127.0.0.1", simulator.ws_port))
        await client.send(Request(host="127.0.0.1", target="/nowhere"))
        rejection = await client.next_event()
        body = await client.next_event()
    assert isinstance(rejection, RejectConnection)
    assert rejection.status_code == 404
    assert isinstance(body, RejectData)
    assert body.data == b"Unknown path '/nowhere'"
