"""Symbols that stop trading, end to end against the simulator: a symbol in BREAK or delisted is said once, is
no longer retried, and shows in ``/api/symbols`` and ``/health``; the service stays healthy."""

from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest
import trio
from test_ingest_support import make_ticks, running_ingest
from test_web_e2e import running_service, service_settings

from app.ingest.exchange_info import TRADING_STATUS_CHECK_SECONDS, status_changes
from app.replay.config import Faults, ManualSource, SimulatorConfig
from app.replay.simulator import open_simulator


def warnings_about(caplog: pytest.LogCaptureFixture, symbol: str) -> list[str]:
    return [record.getMessage() for record in caplog.records
            if record.levelno >= logging.WARNING and f"symbol={symbol}" in record.getMessage()]


async def test_a_symbol_delisted_while_streaming_is_said_once_and_no_longer_retried(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="app")
    config = SimulatorConfig(source=ManualSource(symbols=("BTCUSDT", "SOLUSDT")))
    with trio.fail_after(3600):
        async with open_simulator(config) as simulator, \
                running_ingest(simulator, ["BTCUSDT", "SOLUSDT"], stale_after_seconds=3600.0) as ingest:
            await simulator.wait_subscribed("solusdt@trade")
            simulator.publish(make_ticks("BTCUSDT", 1, 3) + make_ticks("SOLUSDT", 1, 3))
            await ingest.wait_received(6)
            simulator.delist("SOLUSDT")
            await trio.sleep(TRADING_STATUS_CHECK_SECONDS + 1)
            await simulator.wait_until(lambda: simulator.subscriber_count("solusdt@trade") == 0)
            status = ingest.status.symbols["SOLUSDT"]
            assert (status.trading_status, status.subscribed) == ("DELISTED", False)
            assert ingest.subscriptions.symbols() == ("BTCUSDT",)
            # A reconnect checks last trade ids: without the delisted symbol (a request naming it would fail).
            checks = ingest.status.last_id_checks
            simulator.reset_connections()
            await simulator.wait_subscribed("btcusdt@trade")
            simulator.publish(make_ticks("BTCUSDT", 4, 2))
            await ingest.wait_last_id("BTCUSDT", 5)
            await trio.sleep(3 * TRADING_STATUS_CHECK_SECONDS)
            assert ingest.status.last_id_checks > checks
            assert ingest.status.last_id_checks_failed == 0
            assert ingest.status.gaps_unrepaired == 0
    assert warnings_about(caplog, "SOLUSDT") == [
        "symbol delisted symbol=SOLUSDT: exchangeInfo no longer lists it; unsubscribed, no more backfill or "
        "last-id checks for it"]


async def test_a_symbol_in_break_stays_subscribed_and_its_trades_flow_again_when_it_trades(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="app")
    config = SimulatorConfig(source=ManualSource(symbols=("ETHUSDT",)))
    with trio.fail_after(3600):
        async with open_simulator(config) as simulator, \
                running_ingest(simulator, ["ETHUSDT"], stale_after_seconds=3600.0) as ingest:
            await simulator.wait_subscribed("ethusdt@trade")
            simulator.publish(make_ticks("ETHUSDT", 1, 2))
            await ingest.wait_received(2)
            simulator.set_trading_status("ETHUSDT", "BREAK")
            await trio.sleep(3 * TRADING_STATUS_CHECK_SECONDS)  # three checks, one line
            assert ingest.status.symbols["ETHUSDT"].trading_status == "BREAK"
            assert ingest.subscriptions.symbols() == ("ETHUSDT",)
            simulator.set_trading_status("ETHUSDT", "TRADING")
            await trio.sleep(TRADING_STATUS_CHECK_SECONDS + 1)
            assert ingest.status.symbols["ETHUSDT"].trading_status == "TRADING"
            simulator.publish(make_ticks("ETHUSDT", 3, 2))
            await ingest.wait_last_id("ETHUSDT", 4)
    assert [tick.trade_id for tick in ingest.of("ETHUSDT")] == [1, 2, 3, 4]
    assert warnings_about(caplog, "ETHUSDT") == [
        "symbol stopped trading symbol=ETHUSDT status=BREAK: kept subscribed until it trades again",
        "symbol trading again symbol=ETHUSDT"]


async def poll_json(client: httpx.AsyncClient, path: str, done: Any) -> Any:
    """Polls ``path`` until ``done(body)`` holds (the service runs on the real clock here)."""
    while True:
        body = (await client.get(path)).json()
        if done(body):
            return body
        await trio.sleep(0.05)


async def test_symbols_stopped_at_start_show_in_api_symbols_and_health() -> None:
    config = SimulatorConfig(source=ManualSource(symbols=("BTCUSDT", "ETHUSDT", "SOLUSDT")),
                             faults=Faults(break_symbols=("ETHUSDT",), delisted_symbols=("SOLUSDT",)))
    with trio.fail_after(30):
        async with open_simulator(config) as sim:
            settings = service_settings(sim, ("BTCUSDT", "ETHUSDT", "SOLUSDT"))
            async with running_service(settings) as base_url, httpx.AsyncClient(base_url=base_url) as client:
                body = await poll_json(client, "/api/symbols", lambda body: any(
                    row["trading_status"] == "DELISTED" for row in body["symbols"]))
                await sim.wait_subscribed("btcusdt@trade")
                sim.publish(make_ticks("BTCUSDT", 1, 2))
                await poll_json(client, "/api/ticks/BTCUSDT", lambda tick: tick.get("trade_id") == 2)
                health = await poll_json(client, "/health", lambda health: health["status"] == "ok")
                assert sim.subscriber_count("solusdt@trade") == 0
    assert {row["symbol"]: row["trading_status"] for row in body["symbols"]} == {
        "BTCUSDT": "TRADING", "ETHUSDT": "BREAK", "SOLUSDT": "DELISTED"}
    assert health["stopped_symbols"] == [{"symbol": "ETHUSDT", "trading_status": "BREAK"},
                                         {"symbol": "SOLUSDT", "trading_status": "DELISTED"}]
    assert health["reasons"] == []


def test_status_changes_are_what_differs_from_what_is_known() -> None:
    known = {"BTCUSDT": "TRADING", "ETHUSDT": "BREAK", "SOLUSDT": "DELISTED"}
    listed = {"BTCUSDT": "BREAK", "ETHUSDT": "TRADING", "XRPUSDT": "TRADING"}
    symbols = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT", "ADAUSDT"]
    # ADAUSDT: not known (so trading) and not listed: delisted. SOLUSDT stays delisted, XRPUSDT trades.
    assert status_changes(known, listed, symbols) == [("BTCUSDT", "BREAK"), ("ETHUSDT", "TRADING"),
                                                      ("ADAUSDT", "DELISTED")]
