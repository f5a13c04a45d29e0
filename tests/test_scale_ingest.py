"""``marketdata ingest`` leader and hot standby as real processes: kill -9 and SIGSTOP lose and repeat nothing.

The exchange is the simulator in this process (a manual market: the test makes every trade); the bus is the
machine's Redis under the test's own key prefix.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio
from conftest import REDIS_URL
from process_output import read_rest, read_until
from test_ingest_support import make_ticks, trades

from app.bus.keys import BusKeys
from app.bus.publish import last_trade_ids
from app.convert import ticks_from_bus
from app.model import Tick
from app.replay.simulator import Simulator

SYMBOLS = ("BTCUSDT", "ETHUSDT")


@attrs.define
class IngestProcess:
    process: trio.Process
    token: str
    output: list[str]

    def said(self, text: str) -> bool:
        return any(text in line for line in self.output)


@asynccontextmanager
async def role_process(role: str, simulator: Simulator, keys: BusKeys, *flags: str) -> AsyncIterator[IngestProcess]:
    """``marketdata <role>`` against the simulator and the test's bus prefix; yields once it logged its role
    line (``token`` is the ingest's lease token, or the role's URL)."""
    command = [sys.executable, "-m", "app", role, "--symbols", ",".join(SYMBOLS), "--ws-url",
               simulator.ws_url, "--rest-url", simulator.rest_url, "--port", "0", "--bus-url", REDIS_URL,
               "--bus-prefix", keys.prefix, "--lease-ttl", "1", "--log-level", "WARNING", *flags]
    process = await trio.lowlevel.open_process(command, stderr=subprocess.PIPE,
                                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    output: list[str] = []
    assert process.stderr is not None
    try:
        pattern = r"role=ingest .* token=(\S+)" if role == "ingest" else rf"role={role} .* urls=(\S+)"
        token = (await read_until(process.stderr, pattern, output))[1]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_rest, process.stderr, output)
            yield IngestProcess(process, token, output)
            nursery.cancel_scope.cancel()
    finally:
        if process.returncode is None:
            os.kill(process.pid, signal.SIGCONT)
            process.kill()
        with trio.CancelScope(shield=True):
            await process.wait()


def ingest_process(simulator: Simulator, keys: BusKeys) -> Any:
    return role_process("ingest", simulator, keys)


async def wait_until_published(
    redis: Any, keys: BusKeys, last_id: int, *processes: IngestProcess, symbols: Sequence[str] = SYMBOLS
) -> None:
    with trio.move_on_after(60) as waiting:
        while True:
            published = await last_trade_ids(redis, keys)
            if all(published.get(symbol) == last_id for symbol in symbols):
                break
            await trio.sleep(0.05)
    if waiting.cancelled_caught:
        logs = "\n".join("".join(process.output) for process in processes)
        raise AssertionError(f"not published up to {last_id}: {await last_trade_ids(redis, keys)}\n{logs}")


async def wait_for_holder(redis: Any, keys: BusKeys, token: str) -> None:
    while (await redis.get(keys.lease("0/1"))) != token.encode():  # noqa: ASYNC110
        await trio.sleep(0.05)


async def published(redis: Any, keys: BusKeys) -> list[Tick]:
    return [tick for entry in await redis.xrange(keys.ticks) for tick in ticks_from_bus(entry.field_values[b"t"])]


def market(first: int, count: int) -> list[Tick]:
    return [tick for symbol in SYMBOLS for tick in make_ticks(symbol, first, count)]


async def test_failovers_publish_every_trade_once_in_order(simulator: Simulator, redis: Any, keys: BusKeys) -> None:
    with trio.fail_after(240):  # four Python processes starting on a busy 2-core machine
        async with ingest_process(simulator, keys) as first:
            await wait_for_holder(redis, keys, first.token)
            async with ingest_process(simulator, keys) as second:
                await simulator.wait_until(lambda: simulator.open_connections == 2)
                simulator.publish(market(1, 100))
                await wait_until_published(redis, keys, 100, first, second)
                assert second.said("role=ingest") and not second.said("lease acquired")

                first.process.kill()  # kill -9: no release, the lease has to expire
                simulator.publish(market(101, 100))  # made while nobody leads
                await wait_for_holder(redis, keys, second.token)
                await wait_until_published(redis, keys, 200, second)

                async with ingest_process(simulator, keys) as third:
                    os.kill(second.process.pid, signal.SIGSTOP)  # frozen for longer than its lease
                    await wait_for_holder(redis, keys, third.token)
                    simulator.publish(market(201, 100))
                    await wait_until_published(redis, keys, 300, second, third)
                    os.kill(second.process.pid, signal.SIGCONT)  # wakes up believing it leads
                    simulator.publish(market(301, 100))
                    await wait_until_published(redis, keys, 400, second, third)
                    while not second.said("lease lost") and not second.said("publish refused"):  # noqa: ASYNC110
                        await trio.sleep(0.05)
    for symbol in SYMBOLS:
        got = [tick for tick in await published(redis, keys) if tick.symbol == symbol]
        assert trades(got) == trades(make_ticks(symbol, 1, 400))


async def test_sigterm_stops_a_leader_cleanly_and_releases_its_lease_at_once(
    simulator: Simulator, redis: Any, keys: BusKeys
) -> None:
    with trio.fail_after(120):
        async with ingest_process(simulator, keys) as leader:
            await wait_for_holder(redis, keys, leader.token)
            leader.process.send_signal(signal.SIGTERM)
            assert await leader.process.wait() == 0
            # Released, not left to expire: a standby can take over without waiting out the TTL.
            assert await redis.get(keys.lease("0/1")) is None
            while not leader.said("received SIGTERM: stopping"):  # noqa: ASYNC110
                await trio.sleep(0.05)
