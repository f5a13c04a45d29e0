"""``kill -9`` mid-minute, restart: the 1m candle is still exact, and no trade and no candle is lost.

The service runs as a real subprocess (``python -m app serve``) against the simulator on loopback; the test
publishes the trades, reads the service's API and its database beside it: an SQLite file (WAL allows a reader
beside the writer) or a fresh PostgreSQL database.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import attrs
import httpx
import psycopg
import pytest
import trio
from postgres_server import fresh_database

from app.model import Tick, ms_from_utc
from app.replay.config import ManualSource, SimulatorConfig
from app.replay.simulator import Simulator, open_simulator

SYMBOL = "BTCUSDT"
INTERVALS = ("1s", "1m", "5m", "1h", "1d", "1M")
M0 = ms_from_utc(datetime(2024, 8, 8, 23, 58, tzinfo=UTC))
MINUTE = 60_000


def trades(first_id: int, start_ms: int, count: int, step_ms: int) -> list[Tick]:
    return [
        Tick(SYMBOL, Decimal(61_000) + Decimal(trade_id % 17) / 100, Decimal(trade_id % 7 + 1) / 1000,
             start_ms + index * step_ms, start_ms + index * step_ms, trade_id, trade_id % 3 == 0)
        for index, trade_id in enumerate(range(first_id, first_id + count))
    ]


@attrs.frozen
class RunningService:
    url: str
    process: trio.Process


@asynccontextmanager
async def running_service(simulator: Simulator, database: str, workdir: Path) -> AsyncIterator[RunningService]:
    """``python -m app serve`` as a subprocess, once it listens; SIGKILLed at the end unless already ended."""
    command = [
        sys.executable, "-m", "app", "serve", "--symbols", SYMBOL, "--ws-url", simulator.ws_url,
        "--rest-url", simulator.rest_url, "--intervals", ",".join(INTERVALS), "--port", "0",
        "--database-url", database, "--log-level", "INFO",
    ]
    process = await trio.lowlevel.open_process(
        command, cwd=workdir, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stderr is not None
    url_sent, url_received = trio.open_memory_channel[str](1)
    log_lines: list[str] = []

    async def read_log() -> None:
        assert process.stderr is not None
        buffered = b""
        async for chunk in process.stderr:
            buffered += chunk
            *lines, buffered = buffered.split(b"\n")
            for line in lines:
                text = line.decode(errors="replace")
                log_lines.append(text)
                if "serving urls=" in text:
                    url_sent.send_nowait(text.split("serving urls=")[1].split(",")[0].strip())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read_log)
        url = ""
        try:
            with trio.fail_after(20):
                url = await url_received.receive()
            yield RunningService(url, process)
        finally:
            print("\n".join(log_lines))  # shown by pytest when the test fails
            if process.returncode is None:
                process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()
        if process.returncode not in (0, -signal.SIGKILL):
            pytest.fail("service failed:\n" + "\n".join(log_lines[-40:]))


def exact(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.text
    return json.loads(response.text, parse_float=Decimal)


async def wait_ingested(api: httpx.AsyncClient, trade_id: int) -> None:
    for _ in range(2000):
        response = await api.get(f"/api/ticks/{SYMBOL}")
        if response.status_code == 200 and exact(response)["trade_id"] == trade_id:
            return
        await trio.sleep(0.02)
    raise AssertionError(f"trade {trade_id} never arrived")


def stored(database: str, sql: str) -> list[tuple[Any, ...]]:
    if database.startswith("postgresql://"):
        with psycopg.connect(database) as postgres:
            return postgres.execute(sql).fetchall()
    with sqlite3.connect(database.removeprefix("sqlite:///")) as connection:
        return connection.execute(sql).fetchall()


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The service's DATABASE_URL, for each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'marketdata.sqlite3'}"
        return
    with fresh_database() as url:
        yield url


async def wait_stored(database: str, sql: str, expected: list[tuple[Any, ...]]) -> None:
    for _ in range(1000):
        if await trio.to_thread.run_sync(stored, database, sql) == expected:
            return
        await trio.sleep(0.02)
    assert await trio.to_thread.run_sync(stored, database, sql) == expected


def as_kline(candle: dict[str, Any]) -> list[object]:
    open_ms = ms_from_utc(datetime.fromisoformat(candle["open_time"]))
    close_ms = ms_from_utc(datetime.fromisoformat(candle["close_time"]))
    return [open_ms, candle["open"], candle["high"], candle["low"], candle["close"], candle["volume"], close_ms,
            candle["quote_volume"], candle["trade_count"], candle["taker_buy_volume"],
            candle["taker_buy_quote_volume"]]


def binance_kline(row: list[Any]) -> list[object]:
    return [Decimal(value) if isinstance(value, str) else value for value in row[:11]]


@pytest.mark.slow
async def test_kill_9_mid_minute_then_restart_loses_no_trade_and_no_candle(tmp_path: Path, database: str) -> None:
    before_crash = trades(1, M0 + 500, 300, 150)  # all of minute M0 (45 s) ...
    before_crash += trades(301, M0 + MINUTE + 200, 100, 150)  # ... and the first 15 s of M1
    while_down = trades(401, M0 + MINUTE + 20_000, 100, 150)  # the middle of M1, while the service is dead
    after_restart = trades(501, M0 + MINUTE + 40_000, 50, 150)  # the rest of M1, live again
    closing = trades(551, M0 + 2 * MINUTE + 10, 1, 1)  # M2's first trade closes M1
    with trio.fail_after(90):
        async with open_simulator(SimulatorConfig(source=ManualSource(symbols=(SYMBOL,)))) as simulator:
            async with running_service(simulator, database, tmp_path) as first, \
                    httpx.AsyncClient(base_url=first.url) as api:
                await simulator.wait_subscribed("btcusdt@trade")
                simulator.publish(before_crash[:300])
                await wait_ingested(api, 300)
                simulator.publish(before_crash[300:])
                await wait_ingested(api, 400)
                # Mid-minute: some of M1's ticks are on disk; kill before anything else can be written.
                await wait_stored(database, "SELECT COUNT(*) > 300 FROM ticks", [(1,)])
                first.process.send_signal(signal.SIGKILL)
                await first.process.wait()
            simulator.publish(while_down)
            async with running_service(simulator, database, tmp_path) as second, \
                    httpx.AsyncClient(base_url=second.url) as api:
                await simulator.wait_subscribed("btcusdt@trade")
                # The first live trade shows the gap since the last stored id; it is backfilled first.
                simulator.publish(after_restart)
                await wait_ingested(api, 550)
                simulator.publish(closing)
                await wait_ingested(api, 551)
                everything = before_crash + while_down + after_restart + closing
                # No trade lost: every one stored exactly once.
                await wait_stored(database, "SELECT COUNT(*), MIN(trade_id), MAX(trade_id) FROM ticks",
                                  [(len(everything), 1, 551)])
                # The exact 1m candles, and every other interval, equal the exchange's klines.
                async with httpx.AsyncClient(base_url=simulator.rest_url) as exchange:
                    for interval in INTERVALS:
                        klines = exact(await exchange.get("/api/v3/klines", params={
                            "symbol": SYMBOL, "interval": interval, "limit": 1000}))
                        mine = exact(await api.get(f"/api/candles/{SYMBOL}", params={
                            "interval": interval, "limit": 1000}))
                        expected = [binance_kline(row) for row in klines]
                        assert [as_kline(candle) for candle in mine] == expected, interval
                        # The first candle of each interval may be a revision: completed from the exchange's
                        # kline after it had closed (issue 17).
                        assert all(candle["revision"] == 0 for candle in mine[1:])
                # No candle lost: M0 and M1 (closed by a trade) are on disk, exact.
                await wait_stored(database, "SELECT open_time_ms, trade_count, first_trade_id, last_trade_id"
                                  " FROM candles WHERE interval='1m' ORDER BY open_time_ms",
                                  [(M0, 300, 1, 300), (M0 + MINUTE, 250, 301, 550)])
                second.process.send_signal(signal.SIGTERM)  # a clean stop this time
                assert await second.process.wait() == 0
