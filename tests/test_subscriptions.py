"""Live subscription changes against the simulator: SUBSCRIBE/UNSUBSCRIBE on the open connection (no
reconnect), validation against exchangeInfo, pacing under Binance's message limit, sharding, and a desired set
that survives reconnects."""

from __future__ import annotations

import contextlib
from functools import partial

import pytest
import trio
import trio.testing
from test_ingest_support import make_ticks, running_ingest, trades
from trio_websocket import ConnectionClosed, WebSocketRequest, serve_websocket

from app.ingest.connection import StreamConnection
from app.ingest.control import ControlError, ControlTimeout
from app.ingest.status import ConnectionStatus, IngestStatus
from app.ingest.stream_socket import SocketClosed, open_stream_socket
from app.ingest.subscriptions import (
    AlreadySubscribedError,
    ExchangeUnavailableError,
    NotSubscribedError,
    SubscriptionManager,
    UnknownSymbolError,
)
from app.model import Tick
from app.replay.config import Limits, ManualSource, SimulatorConfig
from app.replay.simulator import Simulator, open_simulator

MANY = ("BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT", "ADAUSDT", "DOGEUSDT", "BNBUSDT", "LTCUSDT", "DOTUSDT")


async def test_add_and_remove_at_run_time_without_reconnecting(simulator: Simulator) -> None:
    with trio.fail_after(10):
        async with running_ingest(simulator, ["BTCUSDT"]) as ingest:
            await simulator.wait_subscribed("btcusdt@trade")
            await ingest.subscriptions.add("ethusdt")  # case-insensitive, stored upper-case
            assert ingest.subscriptions.symbols() == ("BTCUSDT", "ETHUSDT")
            # Acknowledged means the exchange already sends it: a trade published now arrives.
            simulator.publish(make_ticks("ETHUSDT", 1, 3))
            await ingest.wait_received(3, "ETHUSDT")
            await ingest.subscriptions.remove("BTCUSDT")
            assert ingest.subscriptions.symbols() == ("ETHUSDT",)
            simulator.publish(make_ticks("BTCUSDT", 1, 5) + make_ticks("ETHUSDT", 4, 1))
            await ingest.wait_received(4, "ETHUSDT")
            assert ingest.of("BTCUSDT") == []
            assert ingest.status.symbols["BTCUSDT"].subscribed is False
            stats = simulator.stats
            assert stats.connections_accepted == 1 and stats.open_connections == 1
            assert stats.control_messages == 2


async def test_unknown_symbols_are_refused_before_subscribing(simulator: Simulator) -> None:
    with trio.fail_after(10):
        async with running_ingest(simulator, ["BTCUSDT"]) as ingest:
            await simulator.wait_subscribed("btcusdt@trade")
            with pytest.raises(UnknownSymbolError, match=r"FOOBAR.*does not list it"):
                await ingest.subscriptions.add("FOOBAR")
            with pytest.raises(UnknownSymbolError, match="2-20 letters or digits"):
                await ingest.subscriptions.add("btc/usdt")
            assert ingest.subscriptions.symbols() == ("BTCUSDT",)
            assert simulator.stats.control_messages == 0


async def test_adding_twice_or_removing_an_absent_symbol_is_a_clear_error(simulator: Simulator) -> None:
    with trio.fail_after(10):
        async with running_ingest(simulator, ["BTCUSDT"]) as ingest:
            with pytest.raises(AlreadySubscribedError, match="BTCUSDT is already subscribed"):
                await ingest.subscriptions.add("BTCUSDT")
            with pytest.raises(NotSubscribedError, match="ETHUSDT is not subscribed"):
                await ingest.subscriptions.remove("ETHUSDT")


async def test_changes_before_ingest_runs_are_refused() -> None:
    manager = SubscriptionManager(["BTCUSDT"], IngestStatus())
    assert manager.symbols() == ("BTCUSDT",)
    with pytest.raises(ExchangeUnavailableError, match="not running"):
        await manager.add("ETHUSDT")


async def test_configured_symbols_binance_does_not_list_are_dropped(simulator: Simulator) -> None:
    with trio.fail_after(10):
        async with running_ingest(simulator, ["BTCUSDT", "NOPEUSDT"]) as ingest:
            while ingest.subscriptions.symbols() != ("BTCUSDT",):
                await ingest.subscriptions.wait_changed()
            assert ingest.status.symbols["NOPEUSDT"].subscribed is False


async def test_a_burst_of_adds_is_paced_under_the_message_limit(autojump_clock: trio.testing.MockClock) -> None:
    # The server pings every second here (Binance: every 20 s): our automatic pongs count towards the same
    # five messages per second, and the paced requests leave room for them. The pacer, the pings and the
    # simulator's rate window all run on the mock clock, so the burst takes the same time on any machine.
    config = SimulatorConfig(source=ManualSource(symbols=MANY), limits=Limits(ping_interval=1.0))
    with trio.fail_after(20):
        async with open_simulator(config) as simulator, running_ingest(simulator, ["BTCUSDT"]) as ingest:
            await simulator.wait_subscribed("btcusdt@trade")
            start = trio.current_time()
            async with trio.open_nursery() as nursery:
                for symbol in MANY[1:]:
                    nursery.start_soon(ingest.subscriptions.add, symbol)
            elapsed = trio.current_time() - start
            assert set(ingest.subscriptions.symbols()) == set(MANY)
            # Eight requests at three per sliding second: the simulator (Binance's 5/s rule) closed nothing.
            assert elapsed >= 2.0
            stats = simulator.stats
            assert stats.rate_limit_closes == 0 and stats.connections_accepted == 1
            assert stats.control_messages == 8
            assert stats.pongs_received >= 2  # the pings at 1 s and 2 s came during the burst
            simulator.publish([make_ticks(symbol, 1, 1)[0] for symbol in MANY])
            await ingest.wait_received(len(MANY))


async def test_the_desired_set_survives_a_reconnect(simulator: Simulator) -> None:
    with trio.fail_after(10):
        async with running_ingest(simulator, ["BTCUSDT"]) as ingest:
            await simulator.wait_subscribed("btcusdt@trade")
            await ingest.subscriptions.add("ETHUSDT")
            await ingest.subscriptions.remove("BTCUSDT")
            simulator.publish(make_ticks("ETHUSDT", 1, 1))
            await ingest.wait_received(1, "ETHUSDT")
            simulator.reset_connections()
            await simulator.wait_until(lambda: simulator.stats.connections_accepted == 2)
            await simulator.wait_subscribed("ethusdt@trade")
            simulator.publish(make_ticks("BTCUSDT", 1, 2) + make_ticks("ETHUSDT", 2, 2))
            await ingest.wait_received(3, "ETHUSDT")
            assert trades(ingest.received) == trades(simulator.published("ETHUSDT"))
            assert "btcusdt@trade" not in ingest.status.connections["shard-0"].url


async def test_symbols_beyond_the_per_connection_cap_go_to_another_connection() -> None:
    config = SimulatorConfig(source=ManualSource(symbols=MANY))
    with trio.fail_after(10):
        async with open_simulator(config) as simulator, running_ingest(
            simulator, MANY[:3], max_streams_per_connection=2
        ) as ingest:
            await simulator.wait_subscribed("solusdt@trade")
            await simulator.wait_subscribed("btcusdt@trade")
            assert simulator.open_connections == 2
            await ingest.subscriptions.add("XRPUSDT")  # room on the second connection
            assert simulator.stats.connections_accepted == 2
            await ingest.subscriptions.add("ADAUSDT")  # both full: a third connection
            assert simulator.stats.connections_accepted == 3
            simulator.publish([make_ticks(symbol, 7, 1)[0] for symbol in MANY[:5]])
            await ingest.wait_received(5)
            assert sorted(tick.symbol for tick in ingest.received) == sorted(MANY[:5])
            await ingest.subscriptions.remove("ADAUSDT")  # its connection is no longer needed
            await simulator.wait_connections(2)
            assert sorted(ingest.status.connections) == ["shard-0", "shard-1"]


async def test_an_unanswered_request_times_out() -> None:
    # The simulator always answers; this loopback server (a fault the simulator lacks) reads and never does.
    async def silent(request: WebSocketRequest) -> None:
        socket = await request.accept()
        with contextlib.suppress(ConnectionClosed):
            while True:
                await socket.get_message()

    status = IngestStatus()
    inbox_send, _inbox_receive = trio.open_memory_channel[list[Tick]](10)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(partial(serve_websocket, silent, "127.0.0.1", 0, ssl_context=None))
            url = f"ws://127.0.0.1:{server.port}/stream?streams=btcusdt@trade"
            async with open_stream_socket(url, connect_timeout=5) as socket:
                connection = StreamConnection(
                    "test", socket, ["btcusdt@trade"], ConnectionStatus("test", url), status, ack_timeout=0.3
                )
                nursery.start_soon(connection.receive, inbox_send)
                with pytest.raises(ControlTimeout, match="no reply within"):
                    await connection.subscribe(["ethusdt@trade"])
                assert "ethusdt@trade" not in connection.subscribed
            nursery.cancel_scope.cancel()


async def test_a_request_fails_as_soon_as_its_connection_closes() -> None:
    # Binance closes a connection that sends too many messages (1008) without answering the last request.
    async def closing(request: WebSocketRequest) -> None:
        socket = await request.accept()
        await socket.get_message()
        await socket.aclose(1008, "Too many requests")

    status = IngestStatus()
    inbox_send, _inbox_receive = trio.open_memory_channel[list[Tick]](10)
    # No time limit tells "as soon as": a request left to its 10 s ack timeout fails with ControlTimeout instead.
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(partial(serve_websocket, closing, "127.0.0.1", 0, ssl_context=None))
            url = f"ws://127.0.0.1:{server.port}/stream?streams=btcusdt@trade"
            async with open_stream_socket(url, connect_timeout=5) as socket:
                connection = StreamConnection("test", socket, ["btcusdt@trade"], ConnectionStatus("test", url), status)
                nursery.start_soon(connection.receive, inbox_send)
                with pytest.raises(SocketClosed, match="code=1008 reason=Too many requests"):
                    await connection.subscribe(["ethusdt@trade"])
            assert connection.end_reason == "closed code=1008 reason=Too many requests"
            nursery.cancel_scope.cancel()


async def test_an_error_reply_fails_the_request_with_binances_code(simulator: Simulator) -> None:
    status = IngestStatus()
    inbox_send, _inbox_receive = trio.open_memory_channel[list[Tick]](10)
    with trio.fail_after(5):
        async with (
            open_stream_socket(simulator.stream_url("btcusdt@trade"), connect_timeout=5) as socket,
            trio.open_nursery() as nursery,
        ):
            connection = StreamConnection("test", socket, ["btcusdt@trade"], ConnectionStatus("test", "url"), status)
            nursery.start_soon(connection.receive, inbox_send)
            with pytest.raises(ControlError, match="invalid stream name") as raised:
                await connection.subscribe(["BTC USDT@trade"])
            assert raised.value.code == 2
            assert status.error_replies == 1
            assert connection.subscribed == {"btcusdt@trade"}
            await connection.subscribe(["ethusdt@trade"])
            assert connection.subscribed == {"btcusdt@trade", "ethusdt@trade"}
            nursery.cancel_scope.cancel()
