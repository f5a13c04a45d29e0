"""Faults and keep-alive: resets, malformed frames, stalls, closes, refusals, slow consumers, pings.

Some tests use a bare wsproto client (``RawClient``) because it neither answers pings by itself nor hides a
TCP reset behind a generic close, which is exactly what these tests look at.
"""

from __future__ import annotations

from decimal import Decimal

import httpx
import pytest
import trio
from raw_ws_client import RawClient
from trio_websocket import ConnectionClosed
from ws_client import open_websocket_client
from wsproto.events import CloseConnection, Ping, TextMessage

from app.convert import FrameError, parse_trade_frame
from app.model import Tick
from app.replay.config import Faults, Limits, ManualSource, SimulatorConfig
from app.replay.simulator import Simulator, open_simulator


def make_tick(trade_id: int, symbol: str = "BTCUSDT") -> Tick:
    return Tick(symbol=symbol, price=Decimal("61837.63000000"), quantity=Decimal("0.02000000"),
                trade_time_ms=1723161255342 + trade_id, event_time_ms=1723161255343 + trade_id,
                trade_id=trade_id, is_buyer_maker=trade_id % 2 == 0)


def config(**changes: object) -> SimulatorConfig:
    base = SimulatorConfig(source=ManualSource(symbols=("BTCUSDT",)))
    return SimulatorConfig(**{**{"source": base.source}, **changes})  # type: ignore[arg-type]


def is_trade(frame: str) -> bool:
    try:
        parse_trade_frame(frame)
    except FrameError:
        return False
    return True


async def test_reset_connections_is_a_tcp_reset_without_close_frame(simulator: Simulator) -> None:
    with trio.fail_after(5):
        client = await RawClient.connect(simulator, "/stream?streams=btcusdt@trade")
        await simulator.wait_subscribed("btcusdt@trade")
        simulator.publish([make_tick(1)])
        assert isinstance(await client.next_event(), TextMessage)
        simulator.reset_connections()
        with pytest.raises(trio.BrokenResourceError) as broken:
            await client.next_event()  # no CloseConnection event comes first
        assert isinstance(broken.value.__cause__, ConnectionResetError)
        await client.stream.aclose()
    assert simulator.stats.connections_reset == 1


async def test_drop_after_n_frames_resets_and_later_trades_are_lost_to_that_socket() -> None:
    with trio.fail_after(5):
        async with open_simulator(config(faults=Faults(drop_after_frames=3))) as sim:
            async with open_websocket_client(sim.stream_url("btcusdt@trade")) as socket:
                await sim.wait_subscribed("btcusdt@trade")
                sim.publish([make_tick(trade_id) for trade_id in range(1, 6)])
                received = [parse_trade_frame(await socket.get_message()).trade_id for _ in range(3)]
                with pytest.raises(ConnectionClosed) as closed:
                    await socket.get_message()
                assert closed.value.reason is not None and closed.value.reason.code == 1006  # no close frame
            assert received == [1, 2, 3]
            assert [tick.trade_id for tick in sim.published("BTCUSDT")] == [1, 2, 3, 4, 5]
            # Reconnecting works; what was published while disconnected is not replayed on the socket.
            async with open_websocket_client(sim.stream_url("btcusdt@trade")) as socket:
                await sim.wait_subscribed("btcusdt@trade")
                sim.publish([make_tick(6)])
                assert parse_trade_frame(await socket.get_message()).trade_id == 6


async def _frames_before_random_drop(seed: int) -> int:
    async with open_simulator(config(faults=Faults(drop_probability=0.1, seed=seed))) as sim:
        async with open_websocket_client(sim.stream_url("btcusdt@trade")) as socket:
            await sim.wait_subscribed("btcusdt@trade")
            for trade_id in range(1, 201):
                sim.publish([make_tick(trade_id)])
            received = 0
            with pytest.raises(ConnectionClosed):
                while True:
                    await socket.get_message()
                    received += 1
            return received


async def test_random_drops_are_seeded_and_repeatable() -> None:
    with trio.fail_after(10):
        first = await _frames_before_random_drop(seed=7)
        again = await _frames_before_random_drop(seed=7)
    assert first == again
    assert 0 < first < 200


async def test_send_malformed_interleaves_bad_frames(simulator: Simulator) -> None:
    with trio.fail_after(5):
        async with open_websocket_client(simulator.stream_url("btcusdt@trade")) as socket:
            await simulator.wait_subscribed("btcusdt@trade")
            simulator.publish([make_tick(1), make_tick(2)])
            simulator.send_malformed(3)
            simulator.publish([make_tick(3), make_tick(4)])
            frames = [await socket.get_message() for _ in range(7)]
    assert [is_trade(frame) for frame in frames] == [True, True, False, False, False, True, True]
    assert [parse_trade_frame(frame).trade_id for frame in frames if is_trade(frame)] == [1, 2, 3, 4]


async def test_malformed_probability_adds_bad_frames_and_loses_no_trade() -> None:
    with trio.fail_after(5):
        async with open_simulator(config(faults=Faults(malformed_probability=0.3, seed=3))) as sim:
            async with open_websocket_client(sim.stream_url("btcusdt@trade")) as socket:
                await sim.wait_subscribed("btcusdt@trade")
                sim.publish([make_tick(trade_id) for trade_id in range(1, 41)])
                await sim.wait_until(lambda: sim.stats.frames_sent >= 40 + sim.stats.malformed_sent)
                frames = [await socket.get_message() for _ in range(40 + sim.stats.malformed_sent)]
    assert sim.stats.malformed_sent > 0
    assert [parse_trade_frame(frame).trade_id for frame in frames if is_trade(frame)] == list(range(1, 41))


async def test_stall_keeps_socket_silent_and_trades_reach_rest_only(autojump_clock: trio.abc.Clock) -> None:
    with trio.fail_after(600):
        async with open_simulator(config()) as sim, open_websocket_client(sim.stream_url("btcusdt@trade")) as socket:
            await sim.wait_subscribed("btcusdt@trade")
            sim.publish([make_tick(1)])
            assert parse_trade_frame(await socket.get_message()).trade_id == 1
            sim.stall(45.0)
            sim.publish([make_tick(2), make_tick(3)])
            async with httpx.AsyncClient(base_url=sim.rest_url, timeout=None) as rest:
                response = await rest.get("/api/v3/historicalTrades", params={"symbol": "BTCUSDT", "fromId": 2})
            assert [row["id"] for row in response.json()] == [2, 3]
            with trio.move_on_after(40) as silent:
                await socket.get_message()
            assert silent.cancelled_caught
            assert sim.stats.pongs_received == 0  # no pings either while stalled
            await trio.sleep(5.1)  # past the 45 s stall
            assert not sim.stalled
            sim.publish([make_tick(4)])
            # Trades 2 and 3 were lost on this socket, as a real stall loses them.
            assert parse_trade_frame(await socket.get_message()).trade_id == 4


async def test_close_all_sends_a_normal_close_frame(simulator: Simulator) -> None:
    with trio.fail_after(5):
        async with open_websocket_client(simulator.ws_url) as socket:
            await simulator.wait_connections(1)
            simulator.close_all(1000, "24h")
            with pytest.raises(ConnectionClosed) as closed:
                await socket.get_message()
    assert closed.value.reason is not None
    assert (closed.value.reason.code, closed.value.reason.reason) == (1000, "24h")


async def test_connections_close_normally_at_24_hours(autojump_clock: trio.abc.Clock) -> None:
    with trio.fail_after(100_000):
        async with open_simulator(config(limits=Limits(ping_interval=3600.0))) as sim:
            async with open_websocket_client(sim.ws_url) as socket:
                opened = trio.current_time()
                with pytest.raises(ConnectionClosed) as closed:
                    await socket.get_message()
                assert trio.current_time() - opened == pytest.approx(24 * 3600, abs=1)
    assert closed.value.reason is not None and closed.value.reason.code == 1000


async def test_refuse_resets_new_connections_for_a_while(autojump_clock: trio.abc.Clock) -> None:
    with trio.fail_after(600):
        async with open_simulator(config()) as sim:
            sim.refuse(30.0)
            stream = await trio.open_tcp_stream("127.0.0.1", sim.ws_port)
            # A reset, not an answer nor a clean close: the request or the read after it fails.
            with pytest.raises(trio.BrokenResourceError):
                await stream.send_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n")
                await stream.receive_some(1024)
            await stream.aclose()
            assert sim.stats.connections_refused == 1
            await trio.sleep(30.0)
            async with open_websocket_client(sim.ws_url):
                await sim.wait_connections(1)


async def test_no_pong_within_60_s_closes_the_connection(autojump_clock: trio.abc.Clock) -> None:
    with trio.fail_after(600):
        async with open_simulator(config()) as sim:
            client = await RawClient.connect(sim, "/ws")
            opened = trio.current_time()
            ping = await client.next_event()
            assert isinstance(ping, Ping)
            assert trio.current_time() - opened == pytest.approx(20.0, abs=0.01)
            event = await client.next_event()
            while isinstance(event, Ping):  # later pings, also unanswered
                event = await client.next_event()
            assert isinstance(event, CloseConnection)
            assert (event.code, event.reason) == (1008, "Pong timeout")
            assert trio.current_time() - opened == pytest.approx(80.0, abs=0.01)
            await client.stream.aclose()


async def test_pings_from_the_client_count_towards_the_rate_limit(simulator: Simulator) -> None:
    with trio.fail_after(5):
        client = await RawClient.connect(simulator, "/ws")
        for number in range(6):
            await client.send(Ping(payload=f"{number}".encode()))
        events = []
        while (event := await client.next_event()) is not None:
            events.append(event)
            if isinstance(event, CloseConnection):
                break
        await client.stream.aclose()
    close = events[-1]
    assert isinstance(close, CloseConnection)
    assert (close.code, close.reason) == (1008, "Too many requests")
    assert simulator.stats.pings_received == 6


async def test_a_consumer_that_cannot_keep_up_is_dropped() -> None:
    with trio.fail_after(5):
        async with open_simulator(config(limits=Limits(outbox_batches=2))) as sim:
            client = await RawClient.connect(sim, "/stream?streams=btcusdt@trade")
            await sim.wait_subscribed("btcusdt@trade")
            # No checkpoint between these publishes: the connection's writer cannot drain its queue.
            for trade_id in range(1, 11):
                sim.publish([make_tick(trade_id)])
            assert sim.stats.slow_consumers_dropped == 1
            await sim.wait_connections(0)
            await client.stream.aclose()
