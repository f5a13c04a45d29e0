"""The service as users run it while its database cannot be written: SQLite with its write lock held by another
process beyond ``busy_timeout``, or PostgreSQL refusing the service's sessions. Ingestion and the API go on,
/health says ``storage_failed``, and once the trouble ends every trade is written."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs
import httpx
import pytest
import trio
from postgres_server import admin_connection, fresh_database
from test_crash_restart import M0, SYMBOL, running_service, trades, wait_ingested, wait_stored
from test_web_e2e import wait_for

from app.replay.config import ManualSource, SimulatorConfig
from app.replay.simulator import open_simulator


@attrs.frozen
class Trouble:
    database_url: str
    begin: Callable[[], object]
    end: Callable[[], object]
    # In the /health message while it lasts.
    symptom: str


@pytest.fixture(params=["sqlite-locked", "postgres-refusing"])
def trouble(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Trouble]:
    if request.param == "sqlite-locked":
        path = tmp_path / "marketdata.sqlite3"
        other: list[sqlite3.Connection] = []

        def lock() -> None:
            other.append(sqlite3.connect(path, isolation_level=None))
            other[0].execute("BEGIN EXCLUSIVE")  # held beyond the service's 5 s busy_timeout

        def unlock() -> None:
            other[0].execute("ROLLBACK")
            other[0].close()

        yield Trouble(f"sqlite:///{path}", lock, unlock, "locked")
        return
    with fresh_database() as url, admin_connection() as admin:
        database = url.rsplit("/", 1)[1]

        def refuse() -> None:  # as a restarting server looks from the service
            admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (database,))

        def accept() -> None:
            admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')

        yield Trouble(url, refuse, accept, "PostgreSQL")


@pytest.mark.slow
async def test_a_database_that_cannot_be_written_is_reported_while_trades_keep_flowing_and_nothing_is_lost(
    tmp_path: Path, trouble: Trouble
) -> None:
    before, during, after = trades(1, M0, 200, 100), trades(201, M0 + 20_000, 300, 100), trades(501, M0 + 50_000, 50, 1)
    with trio.fail_after(90):
        async with open_simulator(SimulatorConfig(source=ManualSource(symbols=(SYMBOL,)))) as simulator:
            async with running_service(simulator, trouble.database_url, tmp_path) as service, \
                    httpx.AsyncClient(base_url=service.url) as api:
                await simulator.wait_subscribed("btcusdt@trade")
                simulator.publish(before)
                await wait_stored(trouble.database_url, "SELECT COUNT(*) FROM ticks", [(200,)])
                trouble.begin()
                simulator.publish(during)
                await wait_ingested(api, 500)  # served from memory meanwhile
                reasons = (await wait_for(api, "/health", lambda r: r.status_code == 503)).json()["reasons"]
                assert [reason["code"] for reason in reasons] == ["storage_failed"]
                assert trouble.symptom in reasons[0]["message"]
                assert "marketdata_storage_failing 1.0" in (await api.get("/metrics")).text
                trouble.end()
                simulator.publish(after)
                await wait_ingested(api, 550)
                await wait_for(api, "/health", lambda r: r.status_code == 200)
                await wait_stored(trouble.database_url, "SELECT COUNT(*), MIN(trade_id), MAX(trade_id) FROM ticks",
                                  [(550, 1, 550)])
                assert "marketdata_ticks_unwritten_total 0.0" in (await api.get("/metrics")).text
