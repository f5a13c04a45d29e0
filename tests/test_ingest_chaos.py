"""The whole promise under chaos: random TCP resets every ~500 frames, malformed frames, a stall, a 24-hour
style close and a serverShutdown, over more than 20,000 trades on several symbols; the output is exactly the
exchange's trades of the subscribed symbols, each once, in order."""

from __future__ import annotations

import pytest
import trio
from test_ingest_support import make_tick, running_ingest, trades

from app.replay.config import Faults, ManualSource, SimulatorConfig
from app.replay.simulator import open_simulator

SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT")
UNSUBSCRIBED = "XRPUSDT"
ROUNDS = 60
# Trades per symbol per round (the unsubscribed symbol trades too, and is never emitted).
PER_ROUND = 120
# A round waits this long at most for the client to catch up before the next one reveals its holes.
CATCH_UP_SECONDS = 0.25


@pytest.mark.slow
async def test_chaos_loses_no_trade_and_emits_each_once_in_order() -> None:
    config = SimulatorConfig(
        source=ManualSource(symbols=(*SYMBOLS, UNSUBSCRIBED)),
        faults=Faults(drop_probability=1 / 500, malformed_probability=1 / 400, seed=20240809),
    )
    next_id = {symbol: 1 for symbol in (*SYMBOLS, UNSUBSCRIBED)}

    def publish_round(count: int) -> None:
        batch = []
        for offset in range(count):
            for symbol in (*SYMBOLS, UNSUBSCRIBED):
                batch.append(make_tick(symbol, next_id[symbol] + offset))
        for symbol in next_id:
            next_id[symbol] += count
        simulator.publish(batch)

    with trio.fail_after(120):
        async with open_simulator(config) as simulator:
            async with running_ingest(simulator, SYMBOLS, stale_after_seconds=0.5) as ingest:
                await simulator.wait_subscribed("btcusdt@trade")
                for round_number in range(ROUNDS):
                    if round_number == 15:
                        simulator.stall(1.0)  # the watchdog replaces the silent connection
                    elif round_number == 30:
                        simulator.close_all(1000, "Connection reached its 24-hour limit")
                    elif round_number >= 45 and ingest.status.server_shutdowns == 0:
                        # Make before break; repeated until a connection was open to hear it.
                        await simulator.wait_until(lambda: simulator.open_connections >= 1)
                        simulator.server_shutdown()
                    publish_round(PER_ROUND)
                    with trio.move_on_after(CATCH_UP_SECONDS):
                        for symbol in SYMBOLS:
                            await ingest.wait_last_id(symbol, next_id[symbol] - PER_ROUND - 1)
                chaos_last = {symbol: next_id[symbol] - 1 for symbol in SYMBOLS}
                # A hole at the very end is only revealed by a later trade: keep trading until all is in.
                while not all(ingest.last_ids.get(symbol, 0) >= chaos_last[symbol] for symbol in SYMBOLS):
                    publish_round(1)
                    with trio.move_on_after(CATCH_UP_SECONDS):
                        for symbol in SYMBOLS:
                            await ingest.wait_last_id(symbol, chaos_last[symbol])

                stats = simulator.stats
                status = ingest.status
                total = 0
                for symbol in SYMBOLS:
                    emitted = ingest.of(symbol)
                    published = simulator.published(symbol)
                    assert trades(emitted) == trades(published[: len(emitted)]), symbol
                    assert len(emitted) >= chaos_last[symbol]
                    assert status.symbols[symbol].unrepaired_gaps == []
                    total += len(emitted)
                assert ingest.of(UNSUBSCRIBED) == []
                assert total >= 20_000
                # The chaos really happened, and was survived rather than avoided.
                assert stats.connections_reset >= 5
                assert stats.malformed_sent >= 5 and status.parse_errors + status.unknown_events > 0
                assert status.stale_connections >= 1
                assert status.server_shutdowns >= 1 and status.connection_switches >= 1
                assert sum(status.symbols[symbol].gaps_repaired for symbol in SYMBOLS) >= 5
                assert stats.rate_limit_closes == 0
