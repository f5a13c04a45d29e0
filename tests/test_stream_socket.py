"""The exchange-side WebSocket client (``app.ingest.stream_socket``) against independent implementations:
trio-websocket servers for the ordinary protocol, and raw loopback servers (wsproto for the handshake and for
reading what the client sends) that write hand-made frames for what a real server should never send."""

from __future__ import annotations

import contextlib
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial

import pytest
import trio
import trio.testing
import trustme
import wsproto
import wsproto.events
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from trio_websocket import ConnectionClosed, WebSocketRequest, serve_websocket

from app.ingest.stream_socket import HandshakeFailed, SocketClosed, StreamSocket, open_stream_socket


def frame(first_byte: int, payload: bytes) -> bytes:
    """A server frame (unmasked), as RFC 6455 §5.2 lays it out."""
    length = len(payload)
    if length < 126:
        return bytes((first_byte, length)) + payload
    if length < 1 << 16:
        return bytes((first_byte, 126)) + struct.pack("!H", length) + payload
    return bytes((first_byte, 127)) + struct.pack("!Q", length) + payload


TEXT, BINARY, CONTINUATION_FINAL, PING = 0x81, 0x82, 0x80, 0x89


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
            + frame(0x88, struct.pack("!H", 1000) + b"done")
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
        (bytes((0x81, 0x80 | 4)) + b"mask" + b"abcd", 1002, "masked frame"),
        (frame(0xC1, b"{}"), 1002, "reserved bits"),
        (frame(0x83, b"{}"), 1002, "unknown opcode 0x3"),
        (frame(0x09, b"ping"), 1002, "control frame was fragmented"),
        (frame(PING, b"p" * 126), 1002, "longer than 125 bytes"),
        (frame(CONTINUATION_FINAL, b"}"), 1002, "continuation frame without a message"),
        (frame(0x01, b"{") + frame(TEXT, b"{}"), 1002, "new message began"),
        (frame(TEXT, b"z" * 2000), 1009, "exceeds 1024"),
        (frame(0x88, b"\x03"), 1002, "one-byte payload"),
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


@st.composite
def server_streams(draw: st.DrawFn) -> tuple[bytes, list[bytes], list[bytes], list[int]]:
    """Frames a server might send (messages, some fragmented, pings between) and read sizes to cut them into."""
    # Large messages (64-bit lengths, spanning reads) are built from a small draw: drawing 64 KiB of bytes
    # would exceed Hypothesis's data budget.
    large = st.builds(lambda size, fill: fill * (size // len(fill) + 1), st.integers(65_536, 66_000),
                      st.binary(min_size=1, max_size=8)).map(bytes)
    messages = draw(st.lists(st.binary(max_size=300) | large, max_size=12))
    wire = bytearray()
    pings: list[bytes] = []
    for message in messages:
        if draw(st.booleans()):
            ping = draw(st.binary(max_size=125))
            pings.append(ping)
            wire += frame(PING, ping)
        if len(message) > 2 and draw(st.booleans()):
            cut = draw(st.integers(1, len(message) - 1))
            wire += frame(0x01, message[:cut]) + frame(CONTINUATION_FINAL, message[cut:])
        else:
            wire += frame(TEXT, message)
    reads = draw(st.lists(st.integers(1, 70_000), min_size=1, max_size=20))
    return bytes(wire), messages, pings, reads


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(server_streams())
def test_any_cut_of_the_byte_stream_gives_the_same_messages_and_pongs(
    stream: tuple[bytes, list[bytes], list[bytes], list[int]],
) -> None:
    wire, expected, pings, reads = stream

    async def main() -> None:
        client_end, server_end = trio.testing.memory_stream_pair()
        socket = StreamSocket(client_end, receive_bytes=70_000)
        received: list[bytes] = []

        async def serve() -> None:
            position = 0
            index = 0
            while position < len(wire):
                # At most ~2,000 writes per example: byte-sized cuts through 64 KiB messages would take minutes.
                size = max(reads[index % len(reads)], len(wire) // 2000)
                await server_end.send_all(wire[position : position + size])
                position += size
                index += 1
            await server_end.send_all(frame(0x88, struct.pack("!H", 1000)))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            with pytest.raises(SocketClosed):
                while True:
                    received.extend(await socket.receive_batch())
        assert received == expected
        server = wsproto.connection.Connection(wsproto.ConnectionType.SERVER)
        server.receive_data(bytes(await server_end.receive_some()))
        events = list(server.events())
        assert [event.payload for event in events if isinstance(event, wsproto.events.Pong)] == pings
        assert [event.code for event in events if isinstance(event, wsproto.events.CloseConnection)] == [1000]

    trio.run(main)
