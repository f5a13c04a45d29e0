"""The dashboard in a real headless Chromium, against the service fed by the demo's simulator (the shipped real
Binance recording), all on loopback. The page's data is read from its DOM and from its documented hook
``window.marketdata.chartData()``, never from pixels.
"""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio
from browser import ARTIFACTS, Browser, PageRecord, chromium_or_skip, open_browser

from app import service
from app.intervals import Interval
from app.replay.cli import shipped_recording
from app.replay.config import ReplaySource, SimulatorConfig
from app.replay.simulator import Simulator, open_simulator
from app.replay.sources import LoadedRecording, load_recording
from app.settings import Settings

pytestmark = pytest.mark.slow

TABLE_ROWS = """() => [...document.querySelectorAll("#symbols tbody tr")].map((row) => ({
  symbol: row.dataset.symbol,
  trade_id: row.dataset.tradeId,
  price: row.querySelector('[data-field="price"]').textContent,
  quantity: row.querySelector('[data-field="quantity"]').textContent,
  stale: row.classList.contains("stale"),
}))"""
# The page is ready: a price in every row, candles in the chart, the feed live.
READY = """(symbols) => {
  const rows = [...document.querySelectorAll("#symbols tbody tr")];
  const priced = rows.filter((row) => /[0-9]/.test(row.querySelector('[data-field="price"]').textContent));
  return priced.length === symbols && window.marketdata.chartData().candles.length > 0
    && window.marketdata.feedState() === "live";
}"""
SHOWS_TRADE_IDS = """(expected) => Object.entries(expected).every(([symbol, tradeId]) =>
  Number(document.querySelector(`#symbols tr[data-symbol="${symbol}"]`)?.dataset.tradeId) === tradeId)"""
TRADE_ID = """(symbol) =>
  Number(document.querySelector(`#symbols tr[data-symbol="${symbol}"]`)?.dataset.tradeId ?? 0)"""


@pytest.fixture(autouse=True)
def chromium() -> str:
    # Before the test's Trio run starts: a skip raised inside its nurseries would lose its message.
    return chromium_or_skip()


@pytest.fixture(scope="module")
def demo_recording() -> LoadedRecording:
    path = shipped_recording("demo-binance-2024-08-08")
    assert path is not None
    return load_recording(path)


def free_port() -> int:
    # The service restarts on the same port in one test; the OS picks one that is free now.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@asynccontextmanager
async def demo_exchange(recording: LoadedRecording, speed: float, loop: bool) -> AsyncIterator[Simulator]:
    source = ReplaySource(path=Path("demo"), speed=speed, loop=loop, recording=recording)
    # The replay starts once the service has subscribed: it sees every trade from the first.
    async with open_simulator(SimulatorConfig(source=source, wait_for_subscribers=1)) as simulator:
        yield simulator


def dashboard_settings(simulator: Simulator, tmp_path: Path, **changes: Any) -> Settings:
    settings = Settings(
        symbols=simulator.symbols,
        binance_ws_url=simulator.ws_url,
        binance_rest_url=simulator.rest_url,
        candle_intervals=(Interval("1m"), Interval("5m"), Interval("1h")),
        http_host="127.0.0.1",
        http_port=free_port(),
        database_url=f"sqlite:///{tmp_path / 'dashboard.sqlite3'}",
    )
    return attrs.evolve(settings, **changes)


@attrs.define
class RunningService:
    """The service as ``marketdata serve`` runs it, in this process; stop() and start() again to restart it."""

    settings: Settings
    nursery: trio.Nursery
    scope: trio.CancelScope | None = None
    url: str = ""

    async def start(self) -> str:
        self.scope = trio.CancelScope()
        urls = await self.nursery.start(self._run, self.scope)
        self.url = urls[0]
        return self.url

    async def _run(self, scope: trio.CancelScope, *, task_status: trio.TaskStatus[Any]) -> None:
        with scope:
            await service.run(self.settings, task_status=task_status)

    def stop(self) -> None:
        assert self.scope is not None
        self.scope.cancel()


@asynccontextmanager
async def running_service(settings: Settings) -> AsyncIterator[RunningService]:
    async with trio.open_nursery() as nursery:
        running = RunningService(settings, nursery)
        await running.start()
        yield running
        nursery.cancel_scope.cancel()


async def open_dashboard(browser: Browser, url: str, symbols: int = 2) -> tuple[Any, PageRecord]:
    page, record = await browser.new_page()
    await browser.call(page.goto, url)
    await browser.wait_for(page, READY, symbols)
    return page, record


@attrs.define
class Session:
    simulator: Simulator
    service: RunningService
    browser: Browser
    page: Any
    record: PageRecord


@asynccontextmanager
async def dashboard_session(
    recording: LoadedRecording, tmp_path: Path, path: str = "/", speed: float = 2.0, **changes: Any,
) -> AsyncIterator[Session]:
    """The demo's exchange replaying in a loop, the service on it, and the page open at ``path``, ready."""
    async with (
        demo_exchange(recording, speed=speed, loop=True) as simulator,
        running_service(dashboard_settings(simulator, tmp_path, **changes)) as running,
        open_browser() as browser,
    ):
        # Connected first: a 503 from /health is a console error in Chromium ("Failed to load resource").
        async with httpx.AsyncClient(base_url=running.url) as client:
            while True:
                if (await client.get("/health")).status_code == 200:
                    break
                await trio.sleep(0.05)  # the service's own clock decides: no event to wait on
        page, record = await open_dashboard(browser, running.url + path)
        ARTIFACTS.mkdir(exist_ok=True)
        yield Session(simulator, running, browser, page, record)


def api_json(response: httpx.Response) -> Any:
    """The body with every decimal as the text the API wrote (json would make floats of them)."""
    assert response.status_code == 200, response.text
    return json.loads(response.text, parse_float=str, parse_int=str)


def as_text(value: object) -> object:
    """Page values in the same form: decimals arrive as their text, integers as numbers."""
    if isinstance(value, dict):
        return {key: as_text(item) for key, item in value.items()}
    if isinstance(value, bool) or value is None:
        return value
    return str(value)


async def test_the_page_loads_from_loopback_only_with_no_console_error(
    demo_recording: LoadedRecording, tmp_path: Path,
) -> None:
    with trio.fail_after(60):
        async with dashboard_session(demo_recording, tmp_path, "/?symbol=ETHUSDT&interval=1m", speed=5) as session:
            browser, page = session.browser, session.page
            chart = await browser.evaluate(page, "() => window.marketdata.chartData()")
            selected = await browser.text(page, "#symbols tr.selected th")
            active_interval = await browser.text(page, "#intervals button.active")
            await browser.call(lambda: page.screenshot(path=str(ARTIFACTS / "dashboard.png")))
    record = session.record
    assert record.console_errors == [] and record.page_errors == []
    assert record.off_loopback() == []
    assert f"{session.service.url}/static/vendor/lightweight-charts.js" in record.requests
    assert selected == "ETHUSDT" and active_interval == "1m"
    assert chart["symbol"] == "ETHUSDT" and chart["interval"] == "1m"
    assert {candle["symbol"] for candle in chart["candles"]} == {"ETHUSDT"}
    # What the chart plots is what it holds (floats of the exact decimals).
    assert chart["plotted"][-1]["close"] == float(chart["candles"][-1]["close"])
    assert (ARTIFACTS / "dashboard.png").stat().st_size > 10_000


async def test_keys_and_clicks_choose_the_view_and_the_url_keeps_it(
    demo_recording: LoadedRecording, tmp_path: Path,
) -> None:
    with trio.fail_after(60):
        async with dashboard_session(demo_recording, tmp_path, "/?symbol=ETHUSDT&interval=1m") as session:
            browser, page = session.browser, session.page
            await browser.call(lambda: page.keyboard.press("ArrowUp"))
            await browser.call(lambda: page.keyboard.press("2"))
            await browser.wait_for(page, """() => {
                const chart = window.marketdata.chartData();
                return chart.candles.length > 0
                  && chart.candles.every((c) => c.symbol === "BTCUSDT" && c.interval === "5m");
            }""")
            by_keys = await browser.evaluate(page, "() => location.search")
            await browser.call(lambda: page.click('#symbols tr[data-symbol="ETHUSDT"]'))
            await browser.call(lambda: page.click('#intervals button[data-interval="1h"]'))
            await browser.wait_for(page, """() => window.marketdata.chartData().candles.some(
                (c) => c.symbol === "ETHUSDT" && c.interval === "1h")""")
            by_clicks = await browser.evaluate(page, "() => location.search")
            # A link opens the same view.
            await browser.call(lambda: page.goto(session.service.url + by_clicks))
            await browser.wait_for(page, READY, 2)
            reopened = await browser.evaluate(page, "() => window.marketdata.chartData()")
    assert by_keys == "?symbol=BTCUSDT&interval=5m"
    assert by_clicks == "?symbol=ETHUSDT&interval=1h"
    assert (reopened["symbol"], reopened["interval"]) == ("ETHUSDT", "1h")
    assert session.record.page_errors == []


async def test_the_table_and_the_chart_show_exactly_what_the_api_serves(
    demo_recording: LoadedRecording, tmp_path: Path,
) -> None:
    with trio.fail_after(90):
        # The whole recording as fast as possible, once: then nothing moves and the page must equal the API.
        async with (
            demo_exchange(demo_recording, speed=0, loop=False) as simulator,
            running_service(dashboard_settings(simulator, tmp_path)) as running,
            httpx.AsyncClient(base_url=running.url) as client,
        ):
            await simulator.wait_source_done()
            ticks: dict[str, Any] = {}
            expected_ids = {symbol: simulator.published(symbol)[-1].trade_id for symbol in simulator.symbols}
            # Until the service has taken the whole recording (the test's fail_after bounds the wait).
            while {symbol: int(tick["trade_id"]) for symbol, tick in ticks.items()} != expected_ids:
                await trio.sleep(0.1)
                ticks = api_json(await client.get("/api/ticks"))
            async with open_browser() as browser:
                page, record = await open_dashboard(browser, f"{running.url}/?symbol=BTCUSDT&interval=1m")
                await browser.wait_for(page, SHOWS_TRADE_IDS, expected_ids)
                rows = await browser.evaluate(page, TABLE_ROWS)
                # The open candle may close by the exchange's clock meanwhile: compare a state both agree on.
                while True:
                    candles = api_json(await client.get("/api/candles/BTCUSDT", params={"interval": "1m"}))
                    chart = await browser.evaluate(page, "() => window.marketdata.chartData()")
                    if as_text(chart["candles"][-1]) == candles[-1]:
                        break
                    await trio.sleep(0.2)
    assert record.console_errors == [] and record.page_errors == []
    assert {row["symbol"]: (row["price"], row["quantity"], row["trade_id"]) for row in rows} == {
        symbol: (tick["price"], tick["quantity"], tick["trade_id"]) for symbol, tick in ticks.items()}
    # Exact text, not a float's: the recording's prices have up to 8 decimals and trailing zeros stripped.
    assert all("e" not in row["price"] for row in rows)
    assert candles[-1]["symbol"] == "BTCUSDT" and candles[-1]["interval"] == "1m"
    assert [as_text(candle) for candle in chart["candles"][-len(candles):]] == candles


async def test_live_updates_move_the_price_and_the_open_candle(
    demo_recording: LoadedRecording, tmp_path: Path,
) -> None:
    with trio.fail_after(60):
        async with dashboard_session(demo_recording, tmp_path, "/?symbol=BTCUSDT&interval=1m") as session:
            browser, page = session.browser, session.page
            first_id = await browser.evaluate(page, TRADE_ID, "BTCUSDT")
            first = (await browser.evaluate(page, "() => window.marketdata.chartData()"))["candles"][-1]
            await browser.wait_for(page, f"() => ({TRADE_ID})('BTCUSDT') > {first_id}")
            await browser.wait_for(page, f"""() => {{
                const last = window.marketdata.chartData().candles.at(-1);
                return last.open_time !== {json.dumps(first["open_time"])} || last.trade_count > {first["trade_count"]};
            }}""")
            later = (await browser.evaluate(page, "() => window.marketdata.chartData()"))["candles"][-1]
    assert session.record.console_errors == [] and session.record.page_errors == []
    assert later["last_trade_id"] > first["last_trade_id"]


async def test_a_service_restart_shows_reconnecting_then_live_data_again(
    demo_recording: LoadedRecording, tmp_path: Path,
) -> None:
    with trio.fail_after(90):
        async with dashboard_session(demo_recording, tmp_path) as session:
            browser, page = session.browser, session.page
            session.service.stop()
            await browser.wait_for(
                page, "() => /^Reconnecting/.test(document.querySelector('#feed-state').textContent)")
            await browser.wait_for(
                page, "() => document.querySelector('#health-status').textContent === 'Service unreachable'")
            stopped_id = await browser.evaluate(page, TRADE_ID, "BTCUSDT")
            shown_while_down = await browser.text(page, "#feed-state")
            await session.service.start()
            await browser.wait_for(page, "() => window.marketdata.feedState() === 'live'")
            await browser.wait_for(page, f"() => ({TRADE_ID})('BTCUSDT') > {stopped_id}")
            await browser.wait_for(page, "() => document.querySelector('#health-status').textContent === 'Healthy'")
    # Refused connections while the service is down are the browser's own console errors; nothing else.
    record = session.record
    assert record.page_errors == []
    assert all("127.0.0.1" in error or "Failed to load resource" in error for error in record.console_errors), \
        record.console_errors
    assert shown_while_down.startswith("Reconnecting")


async def test_a_503_from_health_shows_its_reasons_and_stale_rows(
    demo_recording: LoadedRecording, tmp_path: Path,
) -> None:
    with trio.fail_after(60):
        async with (
            dashboard_session(demo_recording, tmp_path, stale_after_seconds=1.0) as session,
            httpx.AsyncClient(base_url=session.service.url) as client,
        ):
            browser, page = session.browser, session.page
            session.simulator.stall(60)
            await browser.wait_for(
                page, "() => document.querySelector('#health-status').textContent === 'Unavailable (503)'")
            await browser.wait_for(page, "() => document.querySelectorAll('#symbols tr.stale').length === 2")
            shown = await browser.evaluate(page, """() => [...document.querySelectorAll('#health-reasons li')]
                .map((item) => ({code: item.querySelector('code').textContent, text: item.textContent}))""")
            health = await client.get("/health")
            await browser.call(lambda: page.screenshot(path=str(ARTIFACTS / "dashboard-503.png")))
    assert health.status_code == 503
    assert shown, "no reason shown"
    assert {reason["code"] for reason in shown} <= {"stalled", "disconnected"}
    assert all("shard-0" in reason["text"] for reason in shown)
