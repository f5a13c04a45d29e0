"""Shared fixtures."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from app.replay.config import ManualSource, SimulatorConfig
from app.replay.simulator import Simulator, open_simulator


@pytest.fixture
async def simulator() -> AsyncIterator[Simulator]:
    """An exchange simulator on loopback (ports chosen by the OS) with Binance's default limits and a
    manual source: the test publishes exactly the trades it wants with ``simulator.publish(ticks)``.

    For a recording or the synthetic market, open your own: ``async with open_simulator(SimulatorConfig(
    source=ReplaySource(path, speed=0))) as sim``.
    """
    async with open_simulator(SimulatorConfig(source=ManualSource(symbols=("BTCUSDT", "ETHUSDT")))) as sim:
        yield sim
