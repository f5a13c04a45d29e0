"""Trades missed while disconnected are found from the exchange's last trade ids (24hr ticker), without waiting
for a later live trade: quiet symbols on large shards, and symbols unsubscribed before they traded again."""

from __future__ import annotations

import trio
import trio.testing
from test_ingest_support import make_ticks, running_ingest, trades

from app.ingest.gap_repair import GapRepair
from app.ingest.rest import BinanceRest
from app.ingest.status import IngestStatus
from app.model import Tick
from app.replay.config import Limits, ManualSource, SimulatorConfig
from app.replay.simulator import Simulator, open_simulator

SYMBOLS = tuple(f"S{index:02d}USDT" for index in range(30))
EXCHANGE_INFO_WEIGHT = 20
TICKER_WEIGHT = 2  # per request of up to 20 symbols
HISTORICAL_TRADES_WEIGHT = 25


async def _all_subscribed(simulator: Simulator) -> None:
    for symbol in SYMBOLS:
        await simulator.wait_subscribed(f"{symbol.lower()}@trade")


async def test_quiet_symbols_of_a_large_shard_get_their_missed_trades_without_a_later_trade() -> None:
    async with open_simulator(SimulatorConfig(source=ManualSource(symbols=SYMBOLS))) as simulator:
        with trio.fail_after(20):
            async with running_ingest(simulator, SYMBOLS) as ingest:
                await _all_subscribed(simulator)
                simulator.publish([tick for symbol in SYMBOLS for tick in make_ticks(symbol, 1, 2)])
                await ingest.wait_received(2 * len(SYMBOLS))
                simulator.reset_connections()
                quiet = SYMBOLS[5:15]
                # Published while disconnected, and these symbols never trade again.
                simulator.publish([tick for symbol in quiet for tick in make_ticks(symbol, 3, 3)])
                await simulator.wait_accepted(2)
                for symbol in quiet:
                    await ingest.wait_last_id(symbol, 5)
                for symbol in SYMBOLS:
                    assert trades(ingest.of(symbol)) == trades(simulator.published(symbol)), symbol
                assert [tick.trade_id for tick in ingest.of(quiet[0])] == [1, 2, 3, 4, 5]
                for symbol in quiet:
                    status = ingest.status.symbols[symbol]
                    assert status.gaps_repaired == 1 and status.trades_backfilled == 3
                    assert status.unrepaired_gaps == []
                assert all(ingest.status.symbols[symbol].gaps_found == 0 for symbol in SYMBOLS[15:])
                assert ingest.status.last_id_checks == 1 and ingest.status.last_id_checks_failed == 0
        stats = simulator.stats
        assert stats.rest_rejected == 0
        # exchangeInfo once, the ticker for 30 symbols in two requests, one page per quiet symbol.
        expected = EXCHANGE_INFO_WEIGHT + 2 * TICKER_WEIGHT + len(quiet) * HISTORICAL_TRADES_WEIGHT
        assert stats.rest_weight_used == expected


async def test_resumed_quiet_symbol_gets_the_trades_since_the_stored_id_at_start_up(simulator: Simulator) -> None:
    simulator.publish(make_ticks("ETHUSDT", 1, 8))  # ids 1-4 stored before a restart, 5-8 traded meanwhile
    with trio.fail_after(10):
        async with running_ingest(simulator, ["BTCUSDT", "ETHUSDT"], resume_from={"ETHUSDT": 4}) as ingest:
            await ingest.wait_last_id("ETHUSDT", 8)
            assert trades(ingest.of("ETHUSDT")) == trades(simulator.published("ETHUSDT")[4:])


async def test_a_symbol_unsubscribed_while_disconnected_has_its_missed_trades_emitted(simulator: Simulator) -> None:
    with trio.fail_after(10):
        async with running_ingest(simulator, ["BTCUSDT", "ETHUSDT"]) as ingest:
            await simulator.wait_subscribed("ethusdt@trade")
            simulator.publish(make_ticks("ETHUSDT", 1, 2) + make_ticks("BTCUSDT", 1, 1))
            await ingest.wait_received(3)
            simulator.refuse(60.0)  # no reconnect before the unsubscription
            simulator.reset_connections()
            simulator.publish(make_ticks("ETHUSDT", 3, 4))
            await ingest.subscriptions.remove("ETHUSDT")
            # Decision: trades up to the exchange's last id at unsubscription are fetched and emitted first.
            assert ingest.status.symbols["ETHUSDT"].ticks_emitted == 6
            await ingest.wait_last_id("ETHUSDT", 6)
            assert [tick.trade_id for tick in ingest.of("ETHUSDT")] == [1, 2, 3, 4, 5, 6]
            assert trades(ingest.of("ETHUSDT")) == trades(simulator.published("ETHUSDT"))
            status = ingest.status.symbols["ETHUSDT"]
            assert status.subscribed is False and status.unrepaired_gaps == []
            assert status.trades_backfilled == 4
            assert simulator.stats.connections_accepted == 1


async def test_unsubscribing_reports_the_trades_it_could_not_fetch_in_time_as_a_gap() -> None:
    # historicalTrades (weight 25) never fits this budget; the ticker (2) does.
    config = SimulatorConfig(source=ManualSource(symbols=("ETHUSDT",)), limits=Limits(rest_weight_per_minute=10))
    async with open_simulator(config) as simulator:
        simulator.publish(make_ticks("ETHUSDT", 1, 6))
        status = IngestStatus()
        rest = BinanceRest(simulator.rest_url, status)
        ticks_send, ticks_receive = trio.open_memory_channel[list[Tick]](100)
        # Nothing of the gap may come out: ids 3-6 were never fetched.
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                gap_repair = GapRepair(status, rest, ticks_send, nursery, max_backfill_trades=1000,
                                       close_out_timeout=0.5, last_id_settle=0.0)
                gap_repair.track("ETHUSDT", last_trade_id=2)
                await gap_repair.close_out("ETHUSDT")
                gap_repair.forget("ETHUSDT")
                nursery.cancel_scope.cancel()
            await rest.aclose()
    symbol = status.symbols["ETHUSDT"]
    assert [(gap.first_trade_id, gap.last_trade_id) for gap in symbol.unrepaired_gaps] == [(3, 6)]
    assert symbol.trades_lost == 4
    assert "unsubscribed" in symbol.unrepaired_gaps[0].reason
    assert status.rest_rate_limited >= 1
    with ticks_receive:
        assert ticks_receive.statistics().current_buffer_used == 0


async def test_a_stalled_connection_of_a_quiet_symbol_is_repaired_after_the_watchdog_reconnects(
    simulator: Simulator, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(10):
        async with running_ingest(simulator, ["BTCUSDT", "ETHUSDT"], stale_after_seconds=0.3) as ingest:
            await simulator.wait_subscribed("ethusdt@trade")
            simulator.publish(make_ticks("ETHUSDT", 1, 2))
            await ingest.wait_received(2)
            simulator.stall(60.0)
            simulator.publish(make_ticks("ETHUSDT", 3, 2))  # reaches REST, never the stalled socket
            await simulator.wait_accepted(2)
            simulator.stall(0.0)
            await ingest.wait_last_id("ETHUSDT", 4)
            assert trades(ingest.of("ETHUSDT")) == trades(simulator.published("ETHUSDT"))
            assert ingest.status.stale_connections >= 1


async def test_last_trade_ids_are_asked_with_the_least_weight() -> None:
    names = tuple(f"S{index:03d}USDT" for index in range(810))
    async with open_simulator(SimulatorConfig(source=ManualSource(symbols=names))) as simulator:
        simulator.publish(make_ticks(names[0], 5, 3) + make_ticks(names[-1], 1, 1))
        rest = BinanceRest(simulator.rest_url, IngestStatus())
        try:
            with trio.fail_after(10):
                costs = []
                for count in (1, 20, 21, 800, 801, 810):
                    before = simulator.stats.rest_weight_used
                    last_ids = await rest.last_trade_ids(list(names[-count:]))
                    assert set(last_ids) == set(names[-count:])
                    costs.append(simulator.stats.rest_weight_used - before)
                # All symbols at once (80) beats 41 requests of 20 (82).
                assert costs == [2, 2, 4, 80, 80, 80]
                assert last_ids[names[0]] == 7 and last_ids[names[-1]] == 1 and last_ids[names[1]] == -1
        finally:
            await rest.aclose()


async def test_a_symbol_the_exchange_does_not_list_does_not_hide_the_others(simulator: Simulator) -> None:
    simulator.publish(make_ticks("ETHUSDT", 1, 4))
    rest = BinanceRest(simulator.rest_url, IngestStatus())
    try:
        with trio.fail_after(5):
            assert await rest.last_trade_ids(["BTCUSDT", "GONEUSDT", "ETHUSDT"]) == {"BTCUSDT": -1, "ETHUSDT": 4}
    finally:
        await rest.aclose()
