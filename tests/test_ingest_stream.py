"""The stream client against the exchange simulator over loopback: flow, reconnects, stalls, cuts, switches."""

from __future__ import annotations

import random
import socket
import time

import trio
import trio.testing
from test_ingest_support import make_ticks, receive_ticks, running_ingest, trades

from app.ingest.binance_stream import StreamClient
from app.ingest.status import IngestStatus
from app.model import Tick
from app.replay.config import ManualSource, SimulatorConfig
from app.replay.simulator import Simulator, open_simulator


async def test_ticks_of_subscribed_symbols_arrive_in_order_exactly(simulator: Simulator) -> None:
    with trio.fail_after(10):
        async with running_ingest(simulator, ["BTCUSDT"]) as ingest:
            await simulator.wait_subscribed("btcusdt@trade")
            published = make_ticks("BTCUSDT", 1000, 300)
            simulator.publish(published + make_ticks("ETHUSDT", 1, 50))
            await ingest.wait_received(300)
            assert ingest.received == published
            assert ingest.status.symbols["BTCUSDT"].ticks_emitted == 300
            assert ingest.status.symbols["BTCUSDT"].last_trade_id == 1299
            assert "ETHUSDT" not in ingest.status.symbols


async def _reconnected(simulator: Simulator, connections: int) -> None:
    await simulator.wait_until(lambda: simulator.stats.connections_accepted >= connections)
    await simulator.wait_subscribed("btcusdt@trade")


async def test_reconnect_after_reset_loses_no_trade(simulator: Simulator) -> None:
    with trio.fail_after(10):
        async with running_ingest(simulator, ["BTCUSDT", "ETHUSDT"]) as ingest:
            await simulator.wait_subscribed("btcusdt@trade")
            simulator.publish(make_ticks("BTCUSDT", 1, 100) + make_ticks("ETHUSDT", 1, 1))
            await ingest.wait_received(101)
            simulator.reset_connections()
            # Published while disconnected: REST only.
            simulator.publish(make_ticks("BTCUSDT", 101, 2500) + make_ticks("ETHUSDT", 2, 10))
            await _reconnected(simulator, 2)
            simulator.publish(make_ticks("BTCUSDT", 2601, 10) + make_ticks("ETHUSDT", 12, 1))
            await ingest.wait_last_id("BTCUSDT", 2610)
            await ingest.wait_last_id("ETHUSDT", 12)
            assert trades(ingest.of("BTCUSDT")) == trades(simulator.published("BTCUSDT"))
            assert trades(ingest.of("ETHUSDT")) == trades(simulator.published("ETHUSDT"))
            status = ingest.status.symbols["BTCUSDT"]
            assert status.gaps_repaired == 1 and status.trades_backfilled >= 2500
            assert status.unrepaired_gaps == []
            assert ingest.status.connections["shard-0"].reconnects == 1


async def test_trades_missed_while_disconnected_are_found_without_waiting_for_the_next(simulator: Simulator) -> None:
    with trio.fail_after(10):
        async with running_ingest(simulator, ["BTCUSDT", "ETHUSDT"]) as ingest:
            await simulator.wait_subscribed("btcusdt@trade")
            simulator.publish(make_ticks("ETHUSDT", 1, 5) + make_ticks("BTCUSDT", 1, 2))
            await ingest.wait_received(7)
            simulator.reset_connections()
            simulator.publish(make_ticks("ETHUSDT", 6, 3))  # then the symbol goes quiet
            # No later ETHUSDT trade reveals the hole: the new connection has the shard's last trade ids checked.
            await ingest.wait_last_id("ETHUSDT", 8)
            assert trades(ingest.of("ETHUSDT")) == trades(simulator.published("ETHUSDT"))
            status = ingest.status.symbols["ETHUSDT"]
            assert status.gaps_repaired == 1 and status.trades_backfilled == 3
            # BTCUSDT is checked too and missed nothing: no gap is counted, nothing backfilled.
            assert ingest.status.symbols["BTCUSDT"].gaps_found == 0
            assert ingest.status.symbols["BTCUSDT"].trades_backfilled == 0


async def test_trades_of_a_new_symbol_lost_before_its_first_tick_are_found(simulator: Simulator) -> None:
    # Trades older than the subscription are not wanted; those after it are, even if the connection drops
    # before the first one arrives (nothing says where the symbol's stream starts until then).
    simulator.publish(make_ticks("ETHUSDT", 1, 20, t0_ms=time.time_ns() // 1_000_000 - 3_600_000))
    with trio.fail_after(10):
        async with running_ingest(simulator, ["BTCUSDT", "ETHUSDT"]) as ingest:
            await simulator.wait_subscribed("ethusdt@trade")
            # Read after the subscription, however long start-up took: the trades below are newer than it.
            now_ms = time.time_ns() // 1_000_000
            # Stamped by the same exchange clock as ETHUSDT's: ingest estimates that clock from live ticks.
            simulator.publish(make_ticks("BTCUSDT", 1, 1, t0_ms=now_ms))
            await ingest.wait_received(1)
            simulator.reset_connections()
            after_subscription = make_ticks("ETHUSDT", 21, 30, t0_ms=now_ms + 1000)
            simulator.publish(after_subscription[:29])  # REST only
            await _reconnected(simulator, 2)
            simulator.publish(after_subscription[29:])
            await ingest.wait_last_id("ETHUSDT", 50)
            assert trades(ingest.of("ETHUSDT")) == trades(after_subscription)
            assert ingest.status.symbols["ETHUSDT"].trades_backfilled == 29


async def test_a_normal_close_as_at_24_hours_reconnects_and_repairs(simulator: Simulator) -> None:
    with trio.fail_after(10):
        async with running_ingest(simulator, ["BTCUSDT"]) as ingest:
            await simulator.wait_subscribed("btcusdt@trade")
            simulator.publish(make_ticks("BTCUSDT", 1, 10))
            await ingest.wait_received(10)
            simulator.close_all(1000, "Connection reached its 24-hour limit")
            simulator.publish(make_ticks("BTCUSDT", 11, 10))
            await _reconnected(simulator, 2)
            simulator.publish(make_ticks("BTCUSDT", 21, 1))
            await ingest.wait_received(21)
            assert trades(ingest.received) == trades(simulator.published("BTCUSDT"))


async def test_a_stalled_connection_is_replaced_by_the_watchdog(
    simulator: Simulator, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(10):
        async with running_ingest(simulator, ["BTCUSDT"], stale_after_seconds=0.3) as ingest:
            await simulator.wait_subscribed("btcusdt@trade")
            simulator.publish(make_ticks("BTCUSDT", 1, 5))
            await ingest.wait_received(5)
            simulator.stall(60.0)
            # Published during the stall: they reach REST but never the stalled socket.
            simulator.publish(make_ticks("BTCUSDT", 6, 5))
            await simulator.wait_until(lambda: simulator.stats.connections_accepted >= 2)
            simulator.stall(0.0)
            await simulator.wait_subscribed("btcusdt@trade")
            simulator.publish(make_ticks("BTCUSDT", 11, 1))
            await ingest.wait_received(11)
            assert trades(ingest.received) == trades(simulator.published("BTCUSDT"))
            assert ingest.status.stale_connections >= 1


async def test_server_shutdown_switches_connections_make_before_break(simulator: Simulator) -> None:
    with trio.fail_after(10):
        async with running_ingest(simulator, ["BTCUSDT"]) as ingest:
            await simulator.wait_subscribed("btcusdt@trade")
            simulator.publish(make_ticks("BTCUSDT", 1, 10))
            await ingest.wait_received(10)
            simulator.server_shutdown()
            # The replacement opens while the old connection still runs: both are subscribed at once.
            await simulator.wait_subscribed("btcusdt@trade", clients=2)
            simulator.publish(make_ticks("BTCUSDT", 11, 10))  # delivered twice, emitted once
            await simulator.wait_connections(1)
            simulator.publish(make_ticks("BTCUSDT", 21, 10))
            await ingest.wait_received(30)
            assert trades(ingest.received) == trades(simulator.published("BTCUSDT"))
            status = ingest.status
            assert status.server_shutdowns == 1 and status.connection_switches == 1
            assert status.symbols["BTCUSDT"].duplicates_dropped == 10
            assert status.symbols["BTCUSDT"].gaps_found == 0  # nothing was missed, nothing backfilled
            assert simulator.stats.connections_accepted == 2


async def test_connections_are_replaced_before_their_age_limit_make_before_break(
    simulator: Simulator, autojump_clock: trio.testing.MockClock
) -> None:
    # The age limit and the overlap run on the mock clock: the overlap cannot end before trade 1 is published.
    status = IngestStatus()
    inbox_send, inbox_receive = trio.open_memory_channel[list[Tick]](1000)
    client = StreamClient(simulator.ws_url, status, inbox_send, max_connection_age=1.0, switch_overlap=0.2)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(client.run, ["btcusdt@trade"])
            await simulator.wait_subscribed("btcusdt@trade")
            # The replacement is subscribed while the old connection still is: no moment without a stream.
            await simulator.wait_subscribed("btcusdt@trade", clients=2)
            simulator.publish(make_ticks("BTCUSDT", 1, 1))
            await simulator.wait_connections(1)
            simulator.publish(make_ticks("BTCUSDT", 2, 1))
            received = await receive_ticks(inbox_receive, 3)
            nursery.cancel_scope.cancel()
    # Trade 1 came on both connections (the sequencer drops the copy), trade 2 on the new one.
    assert [tick.trade_id for tick in received] == [1, 1, 2]
    assert status.connection_switches >= 1 and status.disconnects == 0
    assert simulator.stats.connections_reset == 0


async def test_an_idle_connection_without_streams_is_not_replaced(
    simulator: Simulator, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(10):
        async with running_ingest(simulator, ["BTCUSDT"], stale_after_seconds=0.2) as ingest:
            await simulator.wait_subscribed("btcusdt@trade")
            await ingest.subscriptions.remove("BTCUSDT")
            await trio.sleep(1.0)  # five watchdog periods of silence
            assert ingest.status.stale_connections == 0
            assert simulator.stats.connections_accepted == 1
            # Reconnecting with nothing to subscribe opens the bare combined endpoint.
            simulator.reset_connections()
            await simulator.wait_until(lambda: simulator.stats.connections_accepted == 2)
            await simulator.wait_connections(1)
            await ingest.subscriptions.add("ETHUSDT")
            simulator.publish(make_ticks("ETHUSDT", 1, 1))
            await ingest.wait_received(1)


async def test_microsecond_time_unit_streams_give_millisecond_ticks(simulator: Simulator) -> None:
    with trio.fail_after(10):
        async with running_ingest(
            simulator, ["BTCUSDT"], binance_ws_url=f"{simulator.ws_url}?timeUnit=MICROSECOND"
        ) as ingest:
            await simulator.wait_subscribed("btcusdt@trade")
            assert "timeUnit=MICROSECOND" in ingest.status.connections["shard-0"].url
            simulator.publish(make_ticks("BTCUSDT", 1, 3))
            await ingest.wait_received(3)
            assert ingest.received == make_ticks("BTCUSDT", 1, 3)


async def test_malformed_frames_are_counted_and_skipped(simulator: Simulator) -> None:
    with trio.fail_after(10):
        async with running_ingest(simulator, ["BTCUSDT"]) as ingest:
            await simulator.wait_subscribed("btcusdt@trade")
            simulator.publish(make_ticks("BTCUSDT", 1, 3))
            await ingest.wait_received(3)
            simulator.send_malformed(20)
            simulator.publish(make_ticks("BTCUSDT", 4, 3))
            await ingest.wait_received(6)
            assert trades(ingest.received) == trades(simulator.published("BTCUSDT"))
            assert ingest.status.parse_errors + ingest.status.unknown_events == 20
            assert ingest.status.parse_errors > 0
            assert simulator.stats.connections_accepted == 1


async def test_refused_connections_are_retried_with_backoff(autojump_clock: trio.testing.MockClock) -> None:
    config = SimulatorConfig(source=ManualSource(symbols=("BTCUSDT",)))
    status = IngestStatus()
    inbox_send, inbox_receive = trio.open_memory_channel[list[Tick]](100)
    with trio.fail_after(10):
        async with open_simulator(config) as simulator, trio.open_nursery() as nursery:
            simulator.refuse(1.5)
            client = StreamClient(simulator.ws_url, status, inbox_send, connect_timeout=0.2, rng=random.Random(5))
            await nursery.start(client.run, ["btcusdt@trade"])
            await simulator.wait_subscribed("btcusdt@trade")
            assert status.connect_failures >= 1
            # Full-jitter backoff from 0.5 s doubling: far fewer attempts than a tight loop would make.
            assert status.connect_attempts <= 8
            simulator.publish(make_ticks("BTCUSDT", 1, 1))
            assert await receive_ticks(inbox_receive, 1) == make_ticks("BTCUSDT", 1, 1)
            nursery.cancel_scope.cancel()


async def test_an_unreachable_exchange_is_retried_with_growing_delays(autojump_clock: trio.testing.MockClock) -> None:
    # A port nobody listens on: every attempt fails at once; only the backoff spaces them.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    status = IngestStatus()
    inbox_send, _inbox_receive = trio.open_memory_channel[list[Tick]](100)
    client = StreamClient(f"ws://127.0.0.1:{port}/ws", status, inbox_send, rng=random.Random(11))
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run, ["btcusdt@trade"])
        await trio.sleep(30.0)
        early = status.connect_attempts
        await trio.sleep(570.0)
        nursery.cancel_scope.cancel()
    # Delays double from 0.5 s to the 30 s cap (mean 15 s once capped): ~6-10 attempts in the first 30 s,
    # then about one every 15 s; never a tight loop, far below Binance's 300 attempts per 5 minutes.
    assert 4 <= early <= 12
    assert 30 <= status.connect_attempts <= 70
    assert status.connect_failures == status.connect_attempts


async def test_start_up_backfills_from_the_persisted_trade_id() -> None:
    history = make_ticks("BTCUSDT", 1, 3000)
    config = SimulatorConfig(source=ManualSource(symbols=("BTCUSDT", "ETHUSDT"), initial=tuple(history)))
    with trio.fail_after(10):
        async with open_simulator(config) as simulator:
            async with running_ingest(simulator, ["BTCUSDT", "ETHUSDT"], resume_from={"BTCUSDT": 1200}) as ingest:
                await simulator.wait_subscribed("btcusdt@trade")
                simulator.publish(make_ticks("BTCUSDT", 3001, 2) + make_ticks("ETHUSDT", 1, 1))
                await ingest.wait_last_id("BTCUSDT", 3002)
                assert trades(ingest.of("BTCUSDT")) == trades(simulator.published("BTCUSDT")[1200:])
                assert ingest.of("ETHUSDT") == make_ticks("ETHUSDT", 1, 1)  # live: event times too


async def test_stored_ids_ahead_of_the_exchange_are_an_error_not_silence(simulator: Simulator) -> None:
    with trio.fail_after(10):
        async with running_ingest(simulator, ["BTCUSDT"], resume_from={"BTCUSDT": 9_000_000}) as ingest:
            await simulator.wait_subscribed("btcusdt@trade")
            simulator.publish(make_ticks("BTCUSDT", 500, 3))
            await ingest.wait_received(3)
            assert ingest.received == make_ticks("BTCUSDT", 500, 3)
            assert ingest.status.resume_mismatches == 1


async def test_backfill_beyond_the_maximum_is_reported_as_a_gap() -> None:
    history = make_ticks("BTCUSDT", 1, 3000)
    config = SimulatorConfig(source=ManualSource(symbols=("BTCUSDT",), initial=tuple(history)))
    with trio.fail_after(10):
        async with open_simulator(config) as simulator:
            async with running_ingest(
                simulator, ["BTCUSDT"], resume_from={"BTCUSDT": 1000}, max_backfill_trades=500
            ) as ingest:
                await simulator.wait_subscribed("btcusdt@trade")
                simulator.publish(make_ticks("BTCUSDT", 3001, 1))
                await ingest.wait_last_id("BTCUSDT", 3001)
                # The newest 500 missing trades are backfilled, the older 1500 are reported, not skipped.
                assert trades(ingest.received) == trades(simulator.published("BTCUSDT")[2500:])
                status = ingest.status.symbols["BTCUSDT"]
                [gap] = status.unrepaired_gaps
                assert (gap.first_trade_id, gap.last_trade_id, gap.missing_count) == (1001, 2500, 1500)
                assert "MAX_BACKFILL_TRADES=500" in gap.reason
                assert status.trades_lost == 1500 and status.gaps_unrepaired == 1
