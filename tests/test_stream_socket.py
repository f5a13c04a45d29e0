"""The exchange-side WebSocket client (``app.ingest.stream_socket``) against independent implementations:
trio-websocket servers for the ordinary protocol, raw loopback servers (wsproto for the handshake and for
reading what the client sends) that write hand-made frames for what a real server should never send, and the
exchange simulator for Binance's keep-alive. The frame parser alone is tested in ``test_frame_reader.py``."""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal
from functools import partial

import orjson
import pytest
import trio
import trio.testing
import trustme
import wsproto
import wsproto.events
from trio_websocket import ConnectionClosed, WebSocketRequest, serve_websocket
from ws_frames import CONTINUATION_FINAL, PING, TEXT, close_frame, frame

from app.ingest.stream_socket import HandshakeFailed, SocketClosed, StreamSocket, open_stream_socket
from app.model import Tick
from app.replay.config import ManualSource, SimulatorConfig
from app.replay.simulator import open_simulator


class RawServer:
    """A loopback server that accepts the upgrade with wsproto and then writes whatever a test hands it."""

    def __init__(self) -> None:
        self.port = 0
        # What the server received from the client after the upgrade, as wsproto events.
        self.events: list[wsproto.events.Event] = []
        self.closed = trio.Event()

    async def serve(
        self,
        script: Callable[[trio.SocketStream], Awaitable[None]],
        *,
        upgrade: bool = True,
        greeting: bytes = b"",
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        async def handle(stream: trio.SocketStream) -> None:
            connection = wsproto.WSConnection(wsproto.ConnectionType.SERVER)
            if upgrade:
                while True:
                    connection.receive_data(await stream.receive_some())
                    requests = [e for e in connection.events() if isinstance(e, wsproto.events.Request)]
                    if requests:
                        break
                # ``greeting``: frames that leave in the same write as the accept reply.
                await stream.send_all(connection.send(wsproto.events.AcceptConnection()) + greeting)
            await script(stream)
            # Read what the client says until it hangs up (its pongs, its close frame).
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                while data := await stream.receive_some():
                    if upgrade:
                        connection.receive_data(data)
                        self.events.extend(connection.events())
            self.closed.set()

        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(handle, listeners)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/stream?streams=btcusdt@trade"


@contextlib.asynccontextmanager
async def raw_server(
    script: Callable[[trio.SocketStream], Awaitable[None]], *, upgrade: bool = True, greeting: bytes = b""
) -> AsyncIterator[RawServer]:
    server = RawServer()
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(server.serve, script, upgrade=upgrade, greeting=greeting))
        yield server
        nursery.cancel_scope.cancel()


async def receive_all(socket: StreamSocket) -> tuple[list[bytes], SocketClosed]:
    """Every message until the socket closes, and how it closed."""
    messages: list[bytes] = []
    with pytest.raises(SocketClosed) as closed:
        while True:
            messages.extend(await socket.receive_batch())
    return messages, closed.value


async def test_messages_pings_and_the_servers_close_against_trio_websocket() -> None:
    pongs: list[bool] = []

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        for number in range(300):
            await ws.send_message(f'{{"n":{number}}}')
        await ws.send_message("x" * 70_000)  # a 64-bit length
        with trio.fail_after(5):
            await ws.ping(b"are you there")  # returns when the matching pong arrives
        pongs.append(True)
        await ws.send_message(b"\x00binary")
        await ws.aclose(4000, "bye")

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(partial(serve_websocket, handler, "127.0.0.1", 0, ssl_context=None))
            async with open_stream_socket(f"ws://127.0.0.1:{server.port}/ws", connect_timeout=5) as socket:
                messages, closed = await receive_all(socket)
            nursery.cancel_scope.cancel()
    assert messages[:300] == [f'{{"n":{number}}}'.encode() for number in range(300)]
    assert messages[300:] == [b"x" * 70_000, b"\x00binary"]
    assert pongs == [True]
    assert (closed.code, closed.reason) == (4000, "bye")


async def test_wss_works_over_tls_with_the_servers_certificate_checked() -> None:
    # Binance is wss:// only: TLS with SNI and certificate checks, here against a test CA on loopback.
    authority = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("localhost").configure_cert(server_context)
    client_context = ssl.create_default_context()
    authority.configure_trust(client_context)

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        await ws.send_message('{"over":"tls"}')
        assert await ws.get_message() == "pong?"
        await ws.aclose()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(
                partial(serve_websocket, handler, "127.0.0.1", 0, ssl_context=server_context)
            )
            url = f"wss://localhost:{server.port}/stream?streams=btcusdt@trade"
            async with open_stream_socket(url, connect_timeout=5, ssl_context=client_context) as socket:
                assert await socket.receive_batch() == [b'{"over":"tls"}']
                await socket.send_text("pong?")
                _, closed = await receive_all(socket)
            assert closed.code == 1000
            # Without the test CA the certificate is refused: no data from an unverified server.
            with pytest.raises(HandshakeFailed, match="CERTIFICATE_VERIFY_FAILED"):
                async with open_stream_socket(url, connect_timeout=5):
                    pass
            nursery.cancel_scope.cancel()


async def test_requests_reach_the_server_masked_and_whole() -> None:
    received: list[str] = []
    client_closed = trio.Event()

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        with contextlib.suppress(ConnectionClosed):
            while True:
                received.append(str(await ws.get_message()))  # wsproto rejects unmasked client frames
        client_closed.set()

    texts = ['{"method":"SUBSCRIBE","params":["btcusdt@trade"],"id":1}', "é" * 200, "y" * 70_000, ""]
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(partial(serve_websocket, handler, "127.0.0.1", 0, ssl_context=None))
            async with open_stream_socket(f"ws://127.0.0.1:{server.port}/ws", connect_timeout=5) as socket:
                for text in texts:
                    await socket.send_text(text)
            await client_closed.wait()
            nursery.cancel_scope.cancel()
    assert received == texts


async def test_a_send_cancelled_midway_ends_the_socket() -> None:
    # A server that stops reading: sends block once the TCP buffers are full, and the cancelled one may have
    # put half a frame on the wire, after which nothing the client sends could be parsed.
    async def script(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    with trio.fail_after(10):
        async with raw_server(script) as server, open_stream_socket(server.url, connect_timeout=5) as socket:
            with trio.move_on_after(0.5) as scope:
                while True:
                    await socket.send_text("x" * 100_000)
            assert scope.cancelled_caught
            with pytest.raises(SocketClosed, match="cancelled midway"):
                await socket.send_text("{}")
            with pytest.raises(SocketClosed, match="cancelled midway"):
                await socket.receive_batch()


async def test_frames_in_the_same_packet_as_the_upgrade_reply_are_kept() -> None:
    async def script(stream: trio.SocketStream) -> None:
        await stream.aclose()

    greeting = frame(TEXT, b'{"first":true}') + frame(TEXT, b'{"second":true}')
    with trio.fail_after(5):
        async with (
            raw_server(script, greeting=greeting) as server,
            open_stream_socket(server.url, connect_timeout=5) as socket,
        ):
            messages, closed = await receive_all(socket)
    assert messages == [b'{"first":true}', b'{"second":true}']
    assert closed.code == 1006 and "without a close frame" in closed.reason


async def test_a_fragmented_message_is_reassembled_with_a_ping_in_between() -> None:
    async def script(stream: trio.SocketStream) -> None:
        await stream.send_all(
            frame(0x01, b'{"part":')  # text, not final
            + frame(PING, b"mid-message")
            + frame(0x00, b'"one')  # continuation
            + frame(CONTINUATION_FINAL, b' and two"}')
            + close_frame(1000, b"done")
        )

    with trio.fail_after(5):
        async with raw_server(script) as server:
            async with open_stream_socket(server.url, connect_timeout=5) as socket:
                messages, closed = await receive_all(socket)
            await server.closed.wait()
    assert messages == [b'{"part":"one and two"}']
    assert (closed.code, closed.reason) == (1000, "done")
    pongs = [event.payload for event in server.events if isinstance(event, wsproto.events.Pong)]
    assert pongs == [b"mid-message"]
    # The server's close was echoed with its code.
    assert [event.code for event in server.events if isinstance(event, wsproto.events.CloseConnection)] == [1000]


@pytest.mark.parametrize(
    ("bad_frame", "code", "reason"),
    [
        # One of each close code through the socket; every rule is in test_frame_reader.py.
        (bytes((0x81, 0x80 | 4)) + b"mask" + b"abcd", 1002, "masked frame"),
        (frame(TEXT, b"z" * 2000), 1009, "exceeds 1024"),
        (frame(TEXT, b'{"p":"\xff"}'), 1007, "not UTF-8"),
        (close_frame(1005), 1002, "close code 1005"),
    ],
)
async def test_protocol_violations_close_with_a_precise_code_after_the_good_messages(
    bad_frame: bytes, code: int, reason: str
) -> None:
    async def script(stream: trio.SocketStream) -> None:
        await stream.send_all(frame(TEXT, b'{"good":1}') + bad_frame + frame(TEXT, b'{"after":1}'))

    with trio.fail_after(5):
        async with raw_server(script) as server:
            async with open_stream_socket(server.url, connect_timeout=5, max_message_bytes=1024) as socket:
                messages, closed = await receive_all(socket)
            await server.closed.wait()
    assert messages == [b'{"good":1}']
    assert closed.code == code and reason in closed.reason
    assert [event.code for event in server.events if isinstance(event, wsproto.events.CloseConnection)] == [code]


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (b"HTTP/1.1 429 Too Many Requests\r\nContent-Length: 0\r\n\r\n", "HTTP 429"),
        (
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: c2VjcmV0\r\n\r\n",
            "wrong Sec-WebSocket-Accept",
        ),
    ],
)
async def test_a_refused_or_wrong_upgrade_is_a_handshake_failure(reply: bytes, error: str) -> None:
    async def script(stream: trio.SocketStream) -> None:
        await stream.receive_some()
        await stream.send_all(reply)

    with trio.fail_after(5):
        async with raw_server(script, upgrade=False) as server:
            with pytest.raises(HandshakeFailed, match=error):
                async with open_stream_socket(server.url, connect_timeout=5):
                    pass


async def test_a_server_that_never_answers_the_upgrade_times_out() -> None:
    async def script(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    with trio.fail_after(5):
        async with raw_server(script, upgrade=False) as server:
            with pytest.raises(HandshakeFailed, match=r"no WebSocket within 0\.2 s"):
                async with open_stream_socket(server.url, connect_timeout=0.2):
                    pass


async def test_pings_are_answered_while_the_consumer_is_held_back(autojump_clock: trio.testing.MockClock) -> None:
    # The simulator pings every 20 s and drops a client that leaves a ping unanswered for 60 s, as Binance
    # does; here nobody calls receive_batch for 90 s (the pipeline behind it applying backpressure).
    def trade(trade_id: int) -> Tick:
        return Tick(symbol="BTCUSDT", price=Decimal("61837.63"), quantity=Decimal("0.02"),
                    trade_time_ms=1723161255342, event_time_ms=1723161255343, trade_id=trade_id,
                    is_buyer_maker=True)

    config = SimulatorConfig(source=ManualSource(symbols=("BTCUSDT",)))
    with trio.fail_after(600):
        async with open_simulator(config) as simulator, open_stream_socket(
            simulator.stream_url("btcusdt@trade"), connect_timeout=5
        ) as socket:
            await simulator.wait_subscribed("btcusdt@trade")
            simulator.publish([trade(1)])
            received = await socket.receive_batch()
            simulator.publish([trade(2)])
            await trio.sleep(90)
            assert simulator.stats.pongs_received == 4  # pings at 20, 40, 60 and 80 s
            assert simulator.open_connections == 1
            simulator.publish([trade(3)])
            while len(received) < 3:
                received += await socket.receive_batch()
    assert [orjson.loads(message)["data"]["t"] for message in received] == [1, 2, 3]


async def test_reading_ahead_stops_at_its_bound_and_loses_nothing() -> None:
    sent = [f'{{"n":{number},"pad":"{"x" * 10_000}"}}'.encode() for number in range(200)]

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        for message in sent:
            await ws.send_message(message)
        await ws.aclose()

    limit, read_size = 100_000, 16_384
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(partial(serve_websocket, handler, "127.0.0.1", 0, ssl_context=None))
            async with open_stream_socket(f"ws://127.0.0.1:{server.port}/ws", connect_timeout=5,
                                          receive_bytes=read_size, max_read_ahead_bytes=limit) as socket:
                # Quiet for 0.1 s: the server is blocked in send (TCP full), the socket has stopped reading.
                await trio.testing.wait_all_tasks_blocked(cushion=0.1)
                # 2 MB were sent; the socket holds one read beyond its bound at most, TCP holds the rest.
                assert limit <= socket.read_ahead_bytes < limit + read_size
                messages, closed = await receive_all(socket)
            nursery.cancel_scope.cancel()
    assert messages == sent
    assert closed.code == 1000
