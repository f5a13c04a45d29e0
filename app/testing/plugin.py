"""The ``marketdata`` pytest plugin (entry point ``pytest11``): fixtures for tests of code that uses marketdata.

- ``binance_simulator``: a ``SimulatedExchange`` on loopback, a manual market of BTCUSDT and ETHUSDT unless
  the test says otherwise with ``@pytest.mark.binance_simulator(recording=..., speed=0, loop=False,
  symbols=(...), faults=Faults(...), timeout=60)``.
- ``marketdata_service``: ``open_service`` connected to that exchange, SQLite in memory, ready when yielded
  (every symbol subscribed at the exchange, and for a recording its first ticks seen or the replay over);
  ``@pytest.mark.marketdata_service(http=True, candle_intervals="1s,1m", ...)`` changes it (any setting).

Both need pytest-trio (``trio_mode = true``, or ``@pytest.mark.trio`` on each test). A test using them is
stopped with ``trio.TooSlowError`` after ``timeout`` seconds (60 by default): a hung network test fails.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from app.embed import MarketData, open_service
from app.settings import Settings
from app.testing import DEFAULT_SYMBOLS, SimulatedExchange, exchange_config, open_simulated_exchange

DEFAULT_TIMEOUT_SECONDS = 60.0


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "binance_simulator(recording=None, speed=0, loop=False, symbols=('BTCUSDT', 'ETHUSDT'), faults=None, "
        "timeout=60): how the binance_simulator fixture's exchange is made (marketdata plugin)",
    )
    config.addinivalue_line(
        "markers",
        "marketdata_service(http=False, **settings): how the marketdata_service fixture runs (marketdata plugin)",
    )


def _marker_kwargs(request: pytest.FixtureRequest, name: str) -> dict[str, Any]:
    marker = request.node.get_closest_marker(name)
    if marker is None:
        return {}
    if marker.args:
        raise pytest.UsageError(f"@pytest.mark.{name} takes keyword arguments only, got {marker.args!r}")
    return dict(marker.kwargs)


@pytest.fixture
async def binance_simulator(request: pytest.FixtureRequest) -> AsyncIterator[SimulatedExchange]:
    """A Binance-compatible exchange on loopback; see ``SimulatedExchange``."""
    options = _marker_kwargs(request, "binance_simulator")
    timeout = float(options.pop("timeout", DEFAULT_TIMEOUT_SECONDS))
    options.setdefault("symbols", DEFAULT_SYMBOLS)
    if options.get("recording") is not None:
        # The replay waits for the service's connection, so that it sees the recording from its first frame.
        options.setdefault("wait_for_subscribers", 1)
    config = exchange_config(**options)
    # An absolute deadline for the whole test (fixtures run in their own tasks; pytest-trio then fails it).
    with trio.fail_after(timeout):
        async with open_simulated_exchange(config) as exchange:
            yield exchange


@pytest.fixture
async def marketdata_service(
    request: pytest.FixtureRequest, binance_simulator: SimulatedExchange
) -> AsyncIterator[MarketData]:
    """The service (``open_service``) ingesting from ``binance_simulator``, with SQLite in memory."""
    options = _marker_kwargs(request, "marketdata_service")
    http = bool(options.pop("http", False))
    fields = {"symbols": binance_simulator.symbols, "binance_ws_url": binance_simulator.ws_url,
              "binance_rest_url": binance_simulator.rest_url, "database_url": "sqlite:///:memory:",
              "http_port": 0, **options}
    settings = Settings(**fields)
    async with open_service(settings, http=http) as service:
        await _ready(binance_simulator, service)
        yield service


async def _ready(exchange: SimulatedExchange, service: MarketData) -> None:
    """Every symbol subscribed at the exchange; then, when the exchange replays something, its first ticks
    reached the service or the replay is over."""
    await exchange.wait_subscribed(service.symbols())
    if exchange.simulator.source_done:
        return
    async with service.subscribe(["*"]) as probe, trio.open_nursery() as race:

        async def first_ticks() -> None:
            await probe.__anext__()
            race.cancel_scope.cancel()

        async def replay_over() -> None:
            await exchange.simulator.wait_source_done()
            race.cancel_scope.cancel()

        race.start_soon(first_ticks)
        race.start_soon(replay_over)


__all__ = ["binance_simulator", "marketdata_service"]
