"""The roles together as real processes, as the scale-out issue prescribes: two shards, each with a leader and a
hot standby, two persisters into PostgreSQL, two API replicas; the exchange resets connections and sends a
malformed frame; one leader is killed (-9), the other frozen past its lease (SIGSTOP, then SIGCONT), a persister
and a replica are killed and the replica restarted. Afterwards a /ws subscriber of the surviving replica has every
trade the exchange made from its first one, exactly once per symbol and in id order; the restarted replica serves
the latest trades; PostgreSQL holds each trade once, and its closed 1m candles equal the exchange's klines.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from decimal import Decimal
from typing import Any

import attrs
import httpx
import psycopg
import pytest
import trio
from postgres_server import fresh_database
from test_ingest_support import T0_MS, make_tick
from test_scale_ingest import IngestProcess, role_process, wait_until_published
from trio_websocket import WebSocketConnection, open_websocket_url

from app.bus.keys import BusKeys
from app.convert import ticks_from_bus
from app.model import Tick
from app.replay.config import ManualSource, SimulatorConfig
from app.replay.simulator import Simulator, open_simulator
from app.roles.sharding import shard_of

SYMBOLS = ("BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT")
MINUTE = 60_000


def trade(symbol: str, trade_id: int) -> Tick:
    # One trade every 2.5 s of trade time: 400 trades span ~17 minutes, so many 1m candles close.
    at = T0_MS - T0_MS % MINUTE + trade_id * 2_500
    return attrs.evolve(make_tick(symbol, trade_id), trade_time_ms=at, event_time_ms=at + 1)


def market(first: int, count: int) -> list[Tick]:
    return [trade(symbol, trade_id) for trade_id in range(first, first + count) for symbol in SYMBOLS]


async def collect(
    ws: WebSocketConnection,
    into: list[dict[str, Any]],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Every trade the subscriber gets, into ``into``; started once the replica confirmed the subscription (the
    market must not trade before: its first trades would reach nobody)."""
    await ws.send_message(json.dumps({"op": "subscribe", "channel": "ticks", "symbols": "*"}))
    assert json.loads(await ws.get_message())["op"] == "subscribed"
    task_status.started()
    while True:
        message = json.loads(await ws.get_message(), parse_float=Decimal)
        into.extend(message["data"])


async def holder(redis: Any, keys: BusKeys, shard: str) -> bytes | None:
    value: bytes | None = await redis.get(keys.lease(shard))
    return value


async def wait_for_leader(redis: Any, keys: BusKeys, shard: str, candidates: list[IngestProcess]) -> IngestProcess:
    while True:
        token = await holder(redis, keys, shard)
        for process in candidates:
            if token == process.token.encode():
                return process
        await trio.sleep(0.05)


def stored(database: str) -> tuple[dict[str, list[tuple[int, Decimal]]], list[tuple[Any, ...]]]:
    with psycopg.connect(database) as connection:
        ticks = connection.execute("SELECT symbol, trade_id, price FROM ticks ORDER BY symbol, trade_id").fetchall()
        candles = connection.execute(
            "SELECT symbol, open_time_ms, open, high, low, close, volume, trade_count, first_trade_id, last_trade_id"
            " FROM candles WHERE interval = '1m' ORDER BY symbol, open_time_ms").fetchall()
    per_symbol: dict[str, list[tuple[int, Decimal]]] = {}
    for symbol, trade_id, price in ticks:
        per_symbol.setdefault(symbol, []).append((trade_id, price))
    return per_symbol, candles


async def missing_trades(redis: Any, keys: BusKeys, received: list[dict[str, Any]]) -> str:
    """For a failure message: per symbol, the trades the subscriber lacks, and where they are on the bus."""
    on_bus: dict[str, list[int]] = {}
    for entry in await redis.xrange(keys.ticks):
        for tick in ticks_from_bus(entry.field_values[b"t"]):
            on_bus.setdefault(tick.symbol, []).append(tick.trade_id)
    lines = []
    for symbol in SYMBOLS:
        seen = {t["trade_id"] for t in received if t["symbol"] == symbol}
        bus = on_bus.get(symbol, [])
        for trade_id in sorted(set(range(1, 401)) - seen):
            where = bus.index(trade_id) if trade_id in bus else None
            around = bus[max(0, where - 5): where + 6] if where is not None else []
            lines.append(f"{symbol} {trade_id} missing; on the bus at {where} of {len(bus)}: ...{around}...")
        if bus != sorted(bus) or len(bus) != len(set(bus)):
            lines.append(f"{symbol} bus out of order or repeated: {bus}")
    return "\n".join(lines)


async def klines(simulator: Simulator) -> list[tuple[Any, ...]]:
    """The exchange's closed 1m candles (its last one is still open) as (symbol, open time, OHLC, volume,
    trade count)."""
    rows = []
    async with httpx.AsyncClient(base_url=simulator.rest_url) as client:
        for symbol in SYMBOLS:
            answer = await client.get("/api/v3/klines", params={"symbol": symbol, "interval": "1m", "limit": 1000})
            rows += [(symbol, row[0], *map(Decimal, row[1:6]), row[8]) for row in answer.json()[:-1]]
    return sorted(rows)


def closed_candles(stored: tuple[Any, list[tuple[Any, ...]]], expected: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """The stored closed 1m candles in the span of ``expected`` as its rows."""
    last_open = {row[0]: row[1] for row in expected}
    return [row[:8] for row in stored[1] if row[1] <= last_open.get(row[0], -1)]


@pytest.fixture
async def simulator() -> AsyncIterator[Simulator]:
    """A manual market listing the four symbols (the shared fixture lists two)."""
    async with open_simulator(SimulatorConfig(source=ManualSource(symbols=SYMBOLS))) as sim:
        yield sim


async def test_two_shards_with_standbys_replicas_and_persisters_lose_and_repeat_nothing(
    simulator: Simulator, redis: Any, keys: BusKeys
) -> None:
    assert {shard_of(symbol, 2) for symbol in SYMBOLS} == {0, 1}
    received: list[dict[str, Any]] = []
    phases: list[str] = []
    candles: list[tuple[Any, ...]] = []
    expected: list[tuple[Any, ...]] = []
    processes: list[IngestProcess] = []
    with fresh_database() as database, trio.move_on_after(360) as deadline:  # nine processes on 2 busy cores
        async with AsyncExitStack() as stack:
            nursery = await stack.enter_async_context(trio.open_nursery())

            async def role(name: str, *flags: str) -> IngestProcess:
                phases.append(f"starting {name} {' '.join(flags)}")
                process = await stack.enter_async_context(role_process(
                    name, simulator, keys, "--symbols", ",".join(SYMBOLS), "--database-url", database, *flags))
                processes.append(process)
                return process

            shards = {shard: [await role("ingest", "--shard", shard), await role("ingest", "--shard", shard)]
                      for shard in ("0/2", "1/2")}
            persisters = [await role("persist"), await role("persist")]
            replicas = [await role("api"), await role("api")]
            leaders = {shard: await wait_for_leader(redis, keys, shard, processes)
                       for shard, processes in shards.items()}
            phases.append("leaders elected")
            await simulator.wait_until(lambda: simulator.open_connections == 4)
            ws = await stack.enter_async_context(open_websocket_url(replicas[0].token.replace("http", "ws") + "/ws"))
            await nursery.start(collect, ws, received)
            phases.append("subscriber connected")
            simulator.publish(market(1, 100))
            await wait_until_published(redis, keys, 100, *shards["0/2"], *shards["1/2"], symbols=SYMBOLS)

            # Shard 0's leader is killed; the exchange resets everyone and sends garbage meanwhile.
            phases.append("published 100")
            leaders["0/2"].process.kill()
            simulator.publish(market(101, 50))
            simulator.reset_connections()
            simulator.send_malformed()
            simulator.publish(market(151, 50))
            await wait_until_published(redis, keys, 200, *shards["0/2"], *shards["1/2"], symbols=SYMBOLS)

            # Shard 1's leader freezes past its lease, then wakes up believing it leads.
            phases.append("published 200 after the kill")
            frozen = leaders["1/2"]
            os.kill(frozen.process.pid, signal.SIGSTOP)
            await wait_for_leader(redis, keys, "1/2", [p for p in shards["1/2"] if p is not frozen])
            simulator.publish(market(201, 100))
            await wait_until_published(redis, keys, 300, *shards["1/2"], symbols=SYMBOLS)
            os.kill(frozen.process.pid, signal.SIGCONT)

            # A persister and a replica die; the replica is started again.
            phases.append("published 300 after the freeze")
            persisters[0].process.kill()
            replicas[1].process.kill()
            restarted = await role("api")
            simulator.publish(market(301, 100))
            await wait_until_published(redis, keys, 400, *shards["0/2"], *shards["1/2"], symbols=SYMBOLS)
            phases.append("published 400")
            while len(received) < 400 * len(SYMBOLS):  # noqa: ASYNC110
                await trio.sleep(0.05)
            phases.append("subscriber has every trade")
            async with httpx.AsyncClient(base_url=restarted.token) as client:
                while (await client.get("/api/ticks")).json().get("SOLUSDT", {}).get("trade_id") != 400:  # noqa: ASYNC110
                    await trio.sleep(0.05)
                latest = (await client.get("/api/ticks")).json()
            phases.append("restarted replica is current")
            # The dead persister's entries are claimed after 15 s idle.
            while sum(map(len, (await trio.to_thread.run_sync(stored, database))[0].values())) < 1600:  # noqa: ASYNC110
                await trio.sleep(0.5)
            phases.append("database has every trade")
            expected = await klines(simulator)
            assert len(expected) == 16 * len(SYMBOLS)  # 400 trades 2.5 s apart: minutes 0..15 closed, 16 open
            while (candles := closed_candles(await trio.to_thread.run_sync(stored, database), expected)) != expected:  # noqa: ASYNC110
                await trio.sleep(0.5)
            phases.append("database candles equal the klines")
            nursery.cancel_scope.cancel()
        ticks_stored, _ = await trio.to_thread.run_sync(stored, database)
    if deadline.cancelled_caught:
        logs = "\n".join("".join(process.output[-20:]) for process in processes)
        trouble = [f"{process.token} {line}" for process in processes for line in "".join(process.output).splitlines()
                   if any(word in line for word in ("ERROR", "error", "hole", "Fenced", "OVERLAP", "refused"))]
        logs = "\n".join(trouble) + "\n" + logs
        if phases[-1] == "database has every trade":
            logs = f"candles differ: {set(candles) ^ set(expected)}\n{logs}"
        raise AssertionError(f"stuck after {phases[-1]!r} (received {len(received)}):\n"
                             f"{await missing_trades(redis, keys, received)}\n{logs}")
    for symbol in SYMBOLS:
        made = [trade(symbol, trade_id) for trade_id in range(1, 401)]
        seen = [(t["trade_id"], t["price"]) for t in received if t["symbol"] == symbol]
        assert seen == [(t.trade_id, t.price) for t in made], symbol
        assert ticks_stored[symbol] == [(t.trade_id, t.price) for t in made], symbol
        assert latest[symbol]["trade_id"] == 400
