"""The service as users run it, while another process holds its SQLite database's write lock for longer than
``busy_timeout``: ingestion and the API go on, /health says ``storage_failed``, and once the lock is released
every trade is written."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import httpx
import pytest
import trio
from test_crash_restart import M0, SYMBOL, running_service, trades, wait_ingested, wait_stored
from test_web_e2e import wait_for

from app.replay.config import ManualSource, SimulatorConfig
from app.replay.simulator import open_simulator


@pytest.mark.slow
async def test_a_locked_database_is_reported_while_trades_keep_flowing_and_nothing_is_lost(tmp_path: Path) -> None:
    path = tmp_path / "marketdata.sqlite3"
    before, during, after = trades(1, M0, 200, 100), trades(201, M0 + 20_000, 300, 100), trades(501, M0 + 50_000, 50, 1)
    with trio.fail_after(90):
        async with open_simulator(SimulatorConfig(source=ManualSource(symbols=(SYMBOL,)))) as simulator:
            async with running_service(simulator, f"sqlite:///{path}", tmp_path) as service, \
                    httpx.AsyncClient(base_url=service.url) as api:
                await simulator.wait_subscribed("btcusdt@trade")
                simulator.publish(before)
                await wait_stored(f"sqlite:///{path}", "SELECT COUNT(*) FROM ticks", [(200,)])
                other = sqlite3.connect(path, isolation_level=None)
                other.execute("BEGIN EXCLUSIVE")  # held beyond the service's 5 s busy_timeout
                simulator.publish(during)
                await wait_ingested(api, 500)  # served from memory meanwhile
                reasons = (await wait_for(api, "/health", lambda r: r.status_code == 503)).json()["reasons"]
                assert [reason["code"] for reason in reasons] == ["storage_failed"]
                assert "locked" in reasons[0]["message"]
                metrics = (await api.get("/metrics")).text
                assert "marketdata_storage_failing 1.0" in metrics
                other.execute("ROLLBACK")
                other.close()
                simulator.publish(after)
                await wait_ingested(api, 550)
                await wait_for(api, "/health", lambda r: r.status_code == 200)
                await wait_stored(f"sqlite:///{path}", "SELECT COUNT(*), MIN(trade_id), MAX(trade_id) FROM ticks",
                                  [(550, 1, 550)])
                assert "marketdata_ticks_unwritten_total 0.0" in (await api.get("/metrics")).text
