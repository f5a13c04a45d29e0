"""Shared fixtures."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import settings

from app.bus.connection import BUS_UNAVAILABLE, redis_client
from app.bus.keys import BusKeys
from app.replay.config import ManualSource, SimulatorConfig
from app.replay.simulator import Simulator, open_simulator

# The one Hypothesis profile, loaded whatever the environment says (Hypothesis would pick its "ci" profile when
# it sees CI set, so CI and a newcomer would run different tests). No deadline: on two shared cores an
# example's duration says more about the neighbours than about the code. Health checks stay on: too_slow is
# how an avoidable cost in a strategy (a default text alphabet's codec scan) shows up. A failure prints its
# reproduction blob, since the example database (.hypothesis/) stays on the machine that found it.
settings.register_profile("marketdata", deadline=None, print_blob=True)
settings.load_profile("marketdata")


@pytest.fixture
async def simulator() -> AsyncIterator[Simulator]:
    """An exchange simulator on loopback (ports chosen by the OS) with Binance's default limits and a
    manual source: the test publishes exactly the trades it wants with ``simulator.publish(ticks)``.

    For a recording or the synthetic market, open your own: ``async with open_simulator(SimulatorConfig(
    source=ReplaySource(path, speed=0))) as sim``.
    """
    async with open_simulator(SimulatorConfig(source=ManualSource(symbols=("BTCUSDT", "ETHUSDT")))) as sim:
        yield sim


REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
async def redis() -> AsyncIterator[Any]:
    """A client of the machine's Redis (127.0.0.1:6379); the test skips, saying what to install, without one."""
    client = redis_client(REDIS_URL)
    try:
        async with client:
            await client.ping()
            yield client
    except BUS_UNAVAILABLE:
        pytest.skip("no Redis at 127.0.0.1:6379: install redis-server (apt install redis-server) to run bus tests")


@pytest.fixture
async def keys(redis: Any) -> AsyncIterator[BusKeys]:
    """A key prefix of the test's own on that Redis, deleted afterwards."""
    keys = BusKeys(prefix=f"test-{uuid.uuid4().hex[:12]}")
    yield keys
    stale = [key async for key in redis.scan_iter(match=f"{keys.prefix}:*")]
    if stale:
        await redis.delete(stale)
