"""Test helpers for users of marketdata: a simulated Binance exchange to drive, and recordings.

The pytest plugin (``app.testing.plugin``, registered as the ``marketdata`` pytest11 entry point) builds its
``binance_simulator`` and ``marketdata_service`` fixtures from these; they work outside pytest as well.

Recordings (the format is in the README, "Recording format"): ``read_recording(path)`` gives the header and
every frame, ``RecordingReader(path).frames()`` iterates them lazily, ``write_recording(path, header, frames)``
writes one (zstd), ``shipped_recording(name)`` finds one shipped in the package.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import trio

from app.clock import wall_clock_ms
from app.model import Tick, ms_from_utc
from app.recording import (
    RecordedFrame,
    RecordingError,
    RecordingHeader,
    RecordingReader,
    read_recording,
    write_recording,
)
from app.replay.cli import shipped_recording
from app.replay.config import Faults, ManualSource, ReplaySource, SimulatorConfig, Source
from app.replay.simulator import Simulator, open_simulator
from app.replay.sources import load_recording

__all__ = [
    "DEFAULT_SYMBOLS",
    "RecordedFrame",
    "RecordingError",
    "RecordingHeader",
    "RecordingReader",
    "SimulatedExchange",
    "exchange_config",
    "open_simulated_exchange",
    "read_recording",
    "shipped_recording",
    "write_recording",
]

DEFAULT_SYMBOLS = ("BTCUSDT", "ETHUSDT")


class SimulatedExchange:
    """A Binance-compatible exchange on loopback (the project's simulator) that a test drives.

    ``ws_url`` and ``rest_url`` are what a client connects to; ``publish_trade`` trades now; the fault methods
    break connections on demand; ``published(symbol)`` is the ground truth. ``simulator`` is the full
    simulator handle (counters, ``wait_until``, more faults).
    """

    def __init__(self, simulator: Simulator) -> None:
        self.simulator = simulator
        self._next_ids: dict[str, int] = {}
        self._next_time_ms: int | None = None

    @property
    def ws_url(self) -> str:
        return self.simulator.ws_url

    @property
    def rest_url(self) -> str:
        return self.simulator.rest_url

    @property
    def symbols(self) -> tuple[str, ...]:
        return self.simulator.symbols

    async def publish_trade(
        self,
        symbol: str,
        *,
        price: str | Decimal,
        quantity: str | Decimal,
        trade_id: int | None = None,
        trade_time: datetime | int | None = None,
        is_buyer_maker: bool = False,
    ) -> Tick:
        """Trades now: to the subscribed sockets and to REST. Without ``trade_id`` the symbol's next id (1
        first); without ``trade_time`` (aware datetime or epoch ms) 1 ms after the previous trade (the wall
        clock first). Returns the trade as published."""
        symbol = symbol.upper()
        if trade_id is None:
            trade_id = self._next_ids.get(symbol) or self._after_last_published(symbol)
        if trade_time is None:
            time_ms = self._next_time_ms if self._next_time_ms is not None else wall_clock_ms()
        else:
            time_ms = trade_time if isinstance(trade_time, int) else ms_from_utc(trade_time)
        tick = Tick(symbol=symbol, price=Decimal(price), quantity=Decimal(quantity), trade_time_ms=time_ms,
                    event_time_ms=time_ms, trade_id=trade_id, is_buyer_maker=is_buyer_maker)
        self.simulator.publish([tick])
        self._next_ids[symbol] = trade_id + 1
        self._next_time_ms = time_ms + 1
        # Lets the simulator's connection tasks send it before the caller goes on.
        await trio.lowlevel.checkpoint()
        return tick

    def _after_last_published(self, symbol: str) -> int:
        published = self.simulator.published(symbol)
        return published[-1].trade_id + 1 if published else 1

    def published(self, symbol: str) -> list[Tick]:
        """Every trade of ``symbol`` published so far, in order: what a client must have seen."""
        return self.simulator.published(symbol.upper())

    def reset_connections(self) -> None:
        """Drops every open WebSocket connection abruptly (TCP reset, no close frame)."""
        self.simulator.reset_connections()

    def stall(self, seconds: float) -> None:
        """Sockets stay open but carry nothing for ``seconds``; trades meanwhile reach REST only."""
        self.simulator.stall(seconds)

    def send_malformed(self, count: int = 1) -> None:
        """Sends ``count`` malformed frames to every open connection."""
        self.simulator.send_malformed(count)

    async def wait_subscribed(self, symbols: Sequence[str], clients: int = 1) -> None:
        """Until ``clients`` connections subscribe to the trade stream of each of ``symbols``."""
        for symbol in symbols:
            await self.simulator.wait_subscribed(f"{symbol.lower()}@trade", clients)


def exchange_config(
    *,
    recording: str | Path | None = None,
    speed: float = 0.0,
    loop: bool = False,
    symbols: Sequence[str] = DEFAULT_SYMBOLS,
    faults: Faults | None = None,
    wait_for_subscribers: int = 0,
) -> SimulatorConfig:
    """The simulator's configuration: a manual market of ``symbols``, or ``recording`` (a path, or the name
    of a shipped one such as ``demo-binance-2024-08-08``) replayed at ``speed`` (0: as fast as it is read)."""
    source: Source
    if recording is None:
        source = ManualSource(symbols=tuple(symbol.upper() for symbol in symbols))
    else:
        path = Path(recording)
        if not path.is_file():
            shipped = shipped_recording(str(recording))
            if shipped is None:
                raise FileNotFoundError(f"no recording {str(recording)!r}: neither a file nor a shipped recording")
            path = shipped
        # Loaded here, not in a thread by the simulator: the same under a MockClock.
        source = ReplaySource(path=path, speed=speed, loop=loop, recording=load_recording(path))
    # A manual market's trades go out with the digits the test gave: publish "100.0", receive "100.0".
    return SimulatorConfig(source=source, faults=faults or Faults(), wait_for_subscribers=wait_for_subscribers,
                           exact_decimals=recording is None)


@asynccontextmanager
async def open_simulated_exchange(config: SimulatorConfig | None = None) -> AsyncIterator[SimulatedExchange]:
    """Runs a simulated exchange (``exchange_config()``'s manual market by default) for the block."""
    async with open_simulator(config or exchange_config()) as simulator:
        yield SimulatedExchange(simulator)
