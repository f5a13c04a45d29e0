"""Running the simulator, and the handle tests drive it with.

    async with open_simulator(SimulatorConfig(source=ReplaySource(path, speed=0))) as sim:
        async with open_websocket_url(sim.stream_url("btcusdt@trade")) as socket: ...
        await sim.wait_published(100)
        sim.stall(5.0)

or, inside a nursery: ``sim = await nursery.start(run_simulator, config)``.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager
from functools import partial

import attrs
import trio

from app.clock import wall_clock_ms
from app.model import Tick
from app.replay.config import Faults, ManualSource, ReplaySource, SimulatorConfig, Source, SyntheticSource
from app.replay.faults import FaultDice, RestFault, malformed_frame
from app.replay.hub import RESET, Hub, SymbolInfo, Termination, symbol_info
from app.replay.publisher import run_source
from app.replay.rest import serve_rest
from app.replay.server import serve_connection
from app.replay.sources import Scheduled, SyntheticMarket, load_recording, replay_schedule
from app.startup import listening

log = logging.getLogger(__name__)


@attrs.frozen(slots=True)
class SimulatorStats:
    """A snapshot of the simulator's counters."""

    connections_accepted: int
    open_connections: int
    connections_refused: int
    connections_rejected: int
    connections_reset: int
    slow_consumers_dropped: int
    control_messages: int
    pings_received: int
    pongs_received: int
    rate_limit_closes: int
    frames_sent: int
    malformed_sent: int
    rest_requests: int
    rest_rejected: int
    rest_weight_used: int
    rest_faults: int
    published_trades: int


class Simulator:
    """A running simulator: its URLs, ground truth, counters, and faults on demand."""

    def __init__(self, config: SimulatorConfig, hub: Hub, dice: FaultDice, ws_port: int, rest_port: int) -> None:
        self.config = config
        self.ws_port = ws_port
        self.rest_port = rest_port
        self._hub = hub
        self._dice = dice

    # --- where it is ---

    @property
    def ws_base_url(self) -> str:
        return f"ws://{_url_host(self.config.host)}:{self.ws_port}"

    @property
    def ws_url(self) -> str:
        """The raw-stream endpoint; subscribe with ``SUBSCRIBE`` (or use ``stream_url``)."""
        return f"{self.ws_base_url}/ws"

    def stream_url(self, *streams: str) -> str:
        """A combined-stream URL: ``/stream?streams=btcusdt@trade/ethusdt@trade``."""
        return f"{self.ws_base_url}/stream?streams={'/'.join(streams)}"

    @property
    def rest_url(self) -> str:
        return f"http://{_url_host(self.config.host)}:{self.rest_port}"

    # --- ground truth and counters ---

    @property
    def symbols(self) -> tuple[str, ...]:
        return tuple(self._hub.symbols)

    def published(self, symbol: str) -> list[Tick]:
        """Every retained trade of ``symbol`` published so far, in order (what REST can serve)."""
        return self._hub.ledger.symbol(symbol).all()

    def published_count(self, symbol: str | None = None) -> int:
        return self._hub.ledger.total if symbol is None else self._hub.ledger.count(symbol)

    @property
    def open_connections(self) -> int:
        return len(self._hub.clients)

    @property
    def stats(self) -> SimulatorStats:
        counters = attrs.asdict(self._hub.counters)
        return SimulatorStats(
            open_connections=len(self._hub.clients), published_trades=self._hub.ledger.total, **counters
        )

    @property
    def stalled(self) -> bool:
        return self._hub.stalled()

    @property
    def source_done(self) -> bool:
        return self._hub.source_done.is_set()

    # --- waiting, never sleeping ---

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Returns once ``predicate()`` holds; it is re-checked on every change of the simulator's state."""
        while not predicate():
            await self._hub.wait_changed()

    async def wait_published(self, count: int, symbol: str | None = None) -> None:
        await self.wait_until(lambda: self.published_count(symbol) >= count)

    async def wait_connections(self, count: int) -> None:
        """Until exactly ``count`` connections are open (0 waits for every connection to end)."""
        await self.wait_until(lambda: len(self._hub.clients) == count)

    async def wait_accepted(self, count: int) -> None:
        """Until ``count`` connections have been accepted in total (e.g. a client's reconnect: previous + 1)."""
        await self.wait_until(lambda: self._hub.counters.connections_accepted >= count)

    async def wait_subscribed(self, stream: str, clients: int = 1) -> None:
        """Until ``clients`` open connections subscribe to ``stream`` (a connection that is going away may
        still count: after a restart, wait for ``wait_accepted`` first)."""
        await self.wait_until(lambda: len(self._hub.subscribers.get(stream, ())) >= clients)

    def subscriber_count(self, stream: str) -> int:
        """How many open connections subscribe to ``stream``."""
        return len(self._hub.subscribers.get(stream, ()))

    async def wait_source_done(self) -> None:
        await self._hub.source_done.wait()

    # --- publishing by hand ---

    def publish(self, ticks: Iterable[Tick]) -> None:
        """Publishes these trades now (on the socket to subscribers, and to REST), as the source would."""
        self._hub.publish_ticks(ticks)

    # --- faults on demand ---

    def reset_connections(self) -> None:
        """Drops every open connection abruptly: TCP reset, no close frame."""
        for client in list(self._hub.clients.values()):
            client.terminate(RESET)

    def close_all(self, code: int = 1000, reason: str = "") -> None:
        """Closes every open connection with a normal close frame (as Binance does at 24 hours)."""
        for client in list(self._hub.clients.values()):
            client.terminate(Termination(code, reason))

    def stall(self, seconds: float) -> None:
        """Sockets stay open but carry nothing (no data, no pings) for ``seconds``; trades published
        meanwhile reach REST only, never the socket."""
        self._hub.stalled_until = trio.current_time() + seconds
        self._hub.changed()

    def refuse(self, seconds: float) -> None:
        """New connections are reset on accept for ``seconds``; open ones are not touched."""
        self._hub.refused_until = trio.current_time() + seconds

    def send_malformed(self, count: int = 1) -> None:
        """Queues ``count`` malformed frames to every open connection, between its regular frames."""
        for client in list(self._hub.clients.values()):
            stream = next(iter(client.subscriptions), "btcusdt@trade")
            frames = [
                malformed_frame(self._dice.rng, client.last_frame, combined=client.combined, stream=stream)
                for _ in range(count)
            ]
            self._hub.counters.malformed_sent += count
            self._hub.send_to(client, frames)

    def send_frames(self, frames: Sequence[str]) -> None:
        """Queues text ``frames`` verbatim to every open connection, whatever it subscribed (e.g. a
        recording's non-trade events, to check that a client skips them)."""
        for client in list(self._hub.clients.values()):
            self._hub.send_to(client, list(frames))

    def set_trading_status(self, symbol: str, status: str = "BREAK") -> None:
        """The symbol stays listed with this exchangeInfo status and trades no more (``TRADING``: trades again)."""
        self._hub.set_trading_status(symbol, status)

    def delist(self, symbol: str) -> None:
        """The symbol leaves exchangeInfo, REST answers -1121 "Invalid symbol." for it, and it trades no more.
        Its open connections stay subscribed and silent, as on Binance."""
        self._hub.delist(symbol)

    def relist(self, symbol: str) -> None:
        """Listed and trading again (after ``delist`` or ``set_trading_status``)."""
        self._hub.relist(symbol)

    def fail_rest(self, endpoint: str, fault: RestFault, times: int = 1) -> None:
        """The next ``times`` requests to ``/api/v3/{endpoint}`` (e.g. ``historicalTrades``) go wrong as
        ``fault`` says, after being charged their weight; later ones are answered normally."""
        self._hub.rest_faults.add(endpoint, fault, times)

    def server_shutdown(self) -> None:
        """Sends Binance's ``serverShutdown`` event to every connection (connections stay open)."""
        self._hub.server_shutdown_event()


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _require_loopback(host: str) -> None:
    if host == "localhost":
        return
    if not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"the simulator binds loopback addresses only, not {host!r}")


async def _prepare_source(source: Source, hub: Hub) -> tuple[Iterator[Scheduled] | None, float]:
    """Loads the source and registers its symbols; returns its schedule (None: manual) and speed."""
    if isinstance(source, ReplaySource):
        recording = source.recording
        if recording is None:
            recording = await trio.to_thread.run_sync(load_recording, source.path)
        hub.register_symbols(symbol_info(symbol) for symbol in recording.symbols)
        log.info("replaying path=%s frames=%d skipped=%d speed=%s loop=%s", source.path,
                 len(recording.frames), recording.skipped, source.speed, source.loop)
        return replay_schedule(recording, loop=source.loop), source.speed
    if isinstance(source, SyntheticSource):
        start_ms = source.start_ms if source.start_ms is not None else wall_clock_ms()
        market = SyntheticMarket(source.symbols, source.rate, source.seed, start_ms)
        hub.register_symbols(
            SymbolInfo(p.symbol, p.base_asset, p.quote_asset, f"{p.tick_size:.8f}", f"{p.lot_size:.8f}")
            for p in market.profiles
        )
        log.info("synthetic market symbols=%d rate=%s seed=%d", source.symbols, source.rate, source.seed)
        return iter(market), source.speed
    assert isinstance(source, ManualSource)
    hub.register_symbols(symbol_info(symbol) for symbol in source.symbols)
    hub.publish_ticks(source.initial)
    return None, 0.0


async def run_simulator(
    config: SimulatorConfig, *, task_status: trio.TaskStatus[Simulator] = trio.TASK_STATUS_IGNORED
) -> None:
    """Runs the simulator until cancelled; reports its handle once both servers listen."""
    _require_loopback(config.host)
    hub = Hub(config.limits, config.retained_trades, exact_decimals=config.exact_decimals)
    dice = FaultDice(config.faults)
    schedule, speed = await _prepare_source(config.source, hub)
    async with trio.open_nursery() as nursery:
        # The flags are ``marketdata simulate``'s; elsewhere (the demo, tests) the ports are 0 and always free.
        with listening("the simulator's WebSocket server", config.host, config.ws_port, "--port"):
            listeners = await nursery.start(
                partial(trio.serve_tcp, partial(serve_connection, hub, dice), config.ws_port, host=config.host)
            )
        ws_port = listeners[0].socket.getsockname()[1]
        with listening("the simulator's REST server", config.host, config.rest_port, "--rest-port"):
            rest_port = await nursery.start(serve_rest, hub, config.host, config.rest_port)
        simulator = Simulator(config, hub, dice, ws_port, rest_port)
        if schedule is None:
            hub.source_done.set()
        else:
            nursery.start_soon(
                partial(
                    run_source, hub, schedule, speed=speed, batch_limit=config.limits.publish_batch,
                    wait_for_subscribers=config.wait_for_subscribers,
                )
            )
        faults = config.faults
        if faults.symbols_stop_after is None:
            _stop_symbols(hub, faults)
        else:
            nursery.start_soon(_stop_symbols_later, hub, faults, faults.symbols_stop_after)
        log.info("simulator listening ws=%s rest=%s", simulator.ws_url, simulator.rest_url)
        task_status.started(simulator)


def _stop_symbols(hub: Hub, faults: Faults) -> None:
    for symbol in faults.break_symbols:
        hub.set_trading_status(symbol, "BREAK")
    for symbol in faults.delisted_symbols:
        hub.delist(symbol)


async def _stop_symbols_later(hub: Hub, faults: Faults, seconds: float) -> None:
    await trio.sleep(seconds)
    _stop_symbols(hub, faults)


@asynccontextmanager
async def open_simulator(config: SimulatorConfig | None = None) -> AsyncIterator[Simulator]:
    """Runs a simulator for the duration of the block (bound to loopback, port 0 unless configured)."""
    async with trio.open_nursery() as nursery:
        simulator: Simulator = await nursery.start(run_simulator, config or SimulatorConfig())
        yield simulator
        nursery.cancel_scope.cancel()
