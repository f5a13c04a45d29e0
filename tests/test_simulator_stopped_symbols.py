"""Symbols that stop trading on the simulator: BREAK (listed, no trades) and delisting (gone, -1121 over REST),
from the start and while streaming; from the config, the Python API and the command line."""

from __future__ import annotations

import argparse
from decimal import Decimal

import httpx
import trio

from app.model import Tick
from app.replay.cli import add_simulate_command, simulator_config
from app.replay.config import Faults, ManualSource, SimulatorConfig
from app.replay.simulator import Simulator, open_simulator

BASE_MS = 1723161240000


def make_tick(trade_id: int, symbol: str = "BTCUSDT") -> Tick:
    return Tick(symbol=symbol, price=Decimal("100.00"), quantity=Decimal("1"), trade_time_ms=BASE_MS + trade_id,
                event_time_ms=BASE_MS + trade_id, trade_id=trade_id, is_buyer_maker=False)


async def statuses(simulator: Simulator) -> dict[str, str]:
    async with httpx.AsyncClient(base_url=simulator.rest_url) as client:
        body = (await client.get("/api/v3/exchangeInfo")).json()
    return {entry["symbol"]: entry["status"] for entry in body["symbols"]}


async def rest_answer(simulator: Simulator, path: str, **params: str) -> tuple[int, object]:
    async with httpx.AsyncClient(base_url=simulator.rest_url) as client:
        response = await client.get(path, params=params)
    return response.status_code, response.json()


async def test_a_symbol_in_break_is_listed_as_break_and_publishes_no_trades(simulator: Simulator) -> None:
    with trio.fail_after(5):
        simulator.publish([make_tick(1), make_tick(1, "ETHUSDT")])
        simulator.set_trading_status("BTCUSDT", "BREAK")
        simulator.publish([make_tick(2), make_tick(2, "ETHUSDT")])
        assert await statuses(simulator) == {"BTCUSDT": "BREAK", "ETHUSDT": "TRADING"}
        # Its history stays on REST; nothing after the break was published.
        status, trades = await rest_answer(simulator, "/api/v3/historicalTrades", symbol="BTCUSDT", fromId="0")
        assert status == 200 and isinstance(trades, list)
        assert [row["id"] for row in trades] == [1]
        simulator.set_trading_status("BTCUSDT", "TRADING")
        simulator.publish([make_tick(3)])
        assert (await statuses(simulator))["BTCUSDT"] == "TRADING"
    assert [tick.trade_id for tick in simulator.published("BTCUSDT")] == [1, 3]
    assert [tick.trade_id for tick in simulator.published("ETHUSDT")] == [1, 2]


async def test_a_delisted_symbol_leaves_exchange_info_and_rest_answers_1121(simulator: Simulator) -> None:
    with trio.fail_after(5):
        simulator.publish([make_tick(1)])
        simulator.delist("BTCUSDT")
        simulator.publish([make_tick(2)])
        assert await statuses(simulator) == {"ETHUSDT": "TRADING"}
        invalid = {"code": -1121, "msg": "Invalid symbol."}
        assert await rest_answer(simulator, "/api/v3/trades", symbol="BTCUSDT") == (400, invalid)
        assert await rest_answer(simulator, "/api/v3/aggTrades", symbol="BTCUSDT") == (400, invalid)
        # A ticker request naming it fails as a whole, as Binance's does.
        assert await rest_answer(simulator, "/api/v3/ticker/24hr", symbols='["BTCUSDT","ETHUSDT"]',
                                 type="MINI") == (400, invalid)
        simulator.relist("BTCUSDT")
        simulator.publish([make_tick(3)])
        assert await statuses(simulator) == {"BTCUSDT": "TRADING", "ETHUSDT": "TRADING"}
    assert [tick.trade_id for tick in simulator.published("BTCUSDT")] == [1, 3]


async def test_configured_faults_stop_symbols_at_start() -> None:
    config = SimulatorConfig(source=ManualSource(symbols=("BTCUSDT", "ETHUSDT", "SOLUSDT")),
                             faults=Faults(break_symbols=("ETHUSDT",), delisted_symbols=("SOLUSDT",)))
    with trio.fail_after(5):
        async with open_simulator(config) as sim:
            assert await statuses(sim) == {"BTCUSDT": "TRADING", "ETHUSDT": "BREAK"}


async def test_configured_faults_stop_symbols_while_streaming(autojump_clock: trio.abc.Clock) -> None:
    config = SimulatorConfig(source=ManualSource(symbols=("BTCUSDT", "ETHUSDT")),
                             faults=Faults(delisted_symbols=("ETHUSDT",), symbols_stop_after=30.0))
    with trio.fail_after(60):
        async with open_simulator(config) as sim:
            sim.publish([make_tick(1, "ETHUSDT")])
            assert "ETHUSDT" in await statuses(sim)
            await trio.sleep(31)
            sim.publish([make_tick(2, "ETHUSDT")])
            assert await statuses(sim) == {"BTCUSDT": "TRADING"}
            assert [tick.trade_id for tick in sim.published("ETHUSDT")] == [1]


def test_command_line_flags_build_the_faults() -> None:
    parser = argparse.ArgumentParser()
    add_simulate_command(parser.add_subparsers())
    config = simulator_config(parser.parse_args(
        ["simulate", "--synthetic", "--break-symbols", "ethusdt, btcusdt", "--delist-symbols", "SOLUSDT",
         "--stop-symbols-after", "90"]))
    assert config.faults.break_symbols == ("ETHUSDT", "BTCUSDT")
    assert config.faults.delisted_symbols == ("SOLUSDT",)
    assert config.faults.symbols_stop_after == 90.0
