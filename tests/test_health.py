"""/health through a real socket: each reason for 503, as the ingest and store tasks would report it."""

from __future__ import annotations

from typing import Any

import httpx
import trio
from web_harness import Harness, make_ticks, running_web

from app.ingest.status import ConnectionStatus, IngestStatus
from app.model import Gap
from app.store.broadcast import ChannelDepth
from app.store.latest import TickHub
from app.store.persist import PersistStatus
from app.web.health import HealthSources, assess_health


def connect(web: Harness, name: str = "shard-0", *, age: float = 0.1) -> ConnectionStatus:
    connection = ConnectionStatus(name=name, url="ws://127.0.0.1:9/stream", streams=2, connected=True,
                                  last_frame_at=trio.current_time() - age)
    web.state.ingest.connections[name] = connection
    return connection


async def health(client: httpx.AsyncClient, status: int) -> dict[str, Any]:
    response = await client.get("/health")
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["status"] == ("ok" if status == 200 else "unavailable")
    return body


def codes(body: dict[str, Any]) -> list[str]:
    return [reason["code"] for reason in body["reasons"]]


async def test_healthy_when_connected_and_fresh() -> None:
    with trio.fail_after(20):
        async with running_web() as web, httpx.AsyncClient(base_url=web.base_url) as client:
            connect(web)
            body = await health(client, 200)
    assert body["reasons"] == [] and body["connections"][0]["connected"] is True


async def test_503_before_any_connection_and_when_one_is_down() -> None:
    with trio.fail_after(20):
        async with running_web() as web, httpx.AsyncClient(base_url=web.base_url) as client:
            assert codes(await health(client, 503)) == ["disconnected"]
            connect(web)
            connect(web, "shard-1").connected = False
            body = await health(client, 503)
    assert codes(body) == ["disconnected"] and "shard-1" in body["reasons"][0]["message"]


async def test_503_when_a_connection_is_silent_longer_than_stale_after() -> None:
    with trio.fail_after(20):
        async with running_web() as web, httpx.AsyncClient(base_url=web.base_url) as client:
            connect(web, age=web.state.settings.stale_after_seconds + 1)
            body = await health(client, 503)
            web.state.ingest.connections["shard-0"].last_frame_at = trio.current_time()
            await health(client, 200)
    assert codes(body) == ["stalled"] and "no frame for" in body["reasons"][0]["message"]


async def test_503_while_backfilling_and_with_an_unrepaired_gap() -> None:
    with trio.fail_after(20):
        async with running_web() as web, httpx.AsyncClient(base_url=web.base_url) as client:
            connect(web)
            status = web.state.ingest.symbol("BTCUSDT")
            status.backfilling = True
            assert codes(await health(client, 503)) == ["backfilling"]
            status.backfilling = False
            status.record_gap(Gap("BTCUSDT", 101, 150, "REST unavailable", 1_723_161_300_000))
            body = await health(client, 503)
    assert codes(body) == ["unrepaired_gap"]
    assert "101..150" in body["reasons"][0]["message"] and "50 trade(s)" in body["reasons"][0]["message"]
    assert body["unrepaired_gaps"] == [{"symbol": "BTCUSDT", "first_trade_id": 101, "last_trade_id": 150,
                                        "reason": "REST unavailable", "detected_at": "2024-08-08T23:55:00.000+00:00"}]


async def test_503_when_the_database_writer_is_behind_or_failing() -> None:
    with trio.fail_after(20):
        # A writer that does not read: its channel fills past half.
        async with running_web(writer_buffer=4) as web, httpx.AsyncClient(base_url=web.base_url) as client:
            connect(web)
            writer_input = web.writer_input
            assert writer_input is not None
            for batch in range(3):
                await web.publish_and_settle(make_ticks("BTCUSDT", 1 + batch, 1))
            body = await health(client, 503)
            assert codes(body) == ["writer_behind"] and "3 of 4" in body["reasons"][0]["message"]
            writer_input.close()
            await web.publish_and_settle(make_ticks("BTCUSDT", 10, 1))  # the hub drops the closed subscriber
            await health(client, 200)


async def test_503_storage_failed_while_database_writes_fail_and_what_was_not_written_is_shown() -> None:
    with trio.fail_after(20):
        async with running_web() as web, httpx.AsyncClient(base_url=web.base_url) as client:
            connect(web)
            persist = web.state.persist
            persist.failing_since = trio.current_time()
            persist.last_write_error = "SQLite write failed: disk I/O error"
            persist.ticks_waiting, persist.ticks_unwritten = 250_000, 7
            persist.unwritten_trade_ids = {"BTCUSDT": [[101, 107]]}
            body = await health(client, 503)
            assert codes(body) == ["storage_failed"]
            message = body["reasons"][0]["message"]
            assert "disk I/O error" in message and "250000 tick(s)" in message and "7 tick(s)" in message
            persist.failing_since = persist.last_write_error = None  # writes succeed again
            recovered = await health(client, 200)
    assert recovered["storage"]["failing"] is False and recovered["storage"]["ticks_unwritten"] == 7
    assert recovered["storage"]["unwritten_trade_ids"] == {"BTCUSDT": [{"first_trade_id": 101, "last_trade_id": 107}]}


def test_health_is_a_function_of_its_sources_alone() -> None:
    # No app, no socket: the status objects the tasks keep, a writer depth, and the time.
    ingest = IngestStatus()
    ingest.connections["shard-0"] = ConnectionStatus("shard-0", "ws://127.0.0.1:9/stream", streams=1,
                                                     connected=True, last_frame_at=100.0)
    sources = HealthSources(ingest=ingest, ticks=TickHub(), persist=PersistStatus(), stale_after_seconds=10.0,
                            writer_depth=lambda: ChannelDepth("persistence", 3, 4))
    assert [problem.code for problem in assess_health(sources, now=105.0).problems] == ["writer_behind"]
    assert [problem.code for problem in assess_health(sources, now=111.0).problems] == ["stalled", "writer_behind"]
    healthy = HealthSources(ingest=ingest, ticks=TickHub(), persist=PersistStatus(), stale_after_seconds=10.0)
    assert assess_health(healthy, now=105.0).ok
