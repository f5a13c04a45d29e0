"""The exchange's shared state: published trades, connected clients and their subscriptions, counters.

The publishing side (``publish``) and the connection handlers (``server.py``) meet here; everything is
plain state mutated from Trio tasks of one thread, so no locks.
"""

from __future__ import annotations

import itertools
import logging
from collections import deque
from collections.abc import Iterable, Sequence

import attrs
import trio

from app.clock import wall_clock_ms
from app.model import Tick
from app.replay.config import Limits
from app.replay.events import MarketEvent, combine, trade_event, trade_payload
from app.replay.faults import RestFaults
from app.replay.ledger import TradeLedger

log = logging.getLogger(__name__)

_QUOTE_ASSETS = ("FDUSD", "USDT", "USDC", "BUSD", "TUSD", "BTC", "ETH", "BNB", "EUR", "TRY", "BRL", "GBP")


@attrs.frozen(slots=True)
class SymbolInfo:
    symbol: str
    base_asset: str
    quote_asset: str
    tick_size: str = "0.01000000"
    step_size: str = "0.00001000"


def symbol_info(symbol: str) -> SymbolInfo:
    """Base and quote assets told apart by the longest known quote-asset suffix."""
    for quote in sorted(_QUOTE_ASSETS, key=len, reverse=True):
        if symbol.endswith(quote) and len(symbol) > len(quote):
            return SymbolInfo(symbol, symbol[: -len(quote)], quote)
    return SymbolInfo(symbol, symbol[:-3], symbol[-3:])


@attrs.frozen(slots=True)
class Termination:
    """How a connection ends: a close frame with ``code`` (None: a TCP reset, no close frame)."""

    code: int | None
    reason: str


RESET = Termination(None, "reset")
# Queued behind a connection's pending frames: the writer sends those, then the close frame goes out.
CLOSE_MARKER: list[str] = []


@attrs.define(slots=True)
class Counters:
    connections_accepted: int = 0
    connections_refused: int = 0
    connections_rejected: int = 0  # bad handshake target, or too many attempts
    slow_consumers_dropped: int = 0
    connections_reset: int = 0
    control_messages: int = 0  # JSON requests received
    pings_received: int = 0
    pongs_received: int = 0
    rate_limit_closes: int = 0
    frames_sent: int = 0
    malformed_sent: int = 0
    rest_requests: int = 0
    rest_rejected: int = 0  # answered 429
    rest_weight_used: int = 0  # request weight charged (requests answered 429 charge none)
    rest_faults: int = 0  # answers spoilt on purpose (``Simulator.fail_rest``)


@attrs.define(eq=False, slots=True)
class Client:
    """One accepted WebSocket connection as the exchange sees it."""

    id: int
    combined: bool
    microseconds: bool
    outbox: trio.MemorySendChannel[list[str]]
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    subscriptions: dict[str, None] = attrs.field(factory=dict)
    termination: Termination | None = None
    frames_sent: int = 0
    incoming: deque[float] = attrs.field(factory=deque)
    pending_pings: set[bytes] = attrs.field(factory=set)
    ping_outstanding_since: float | None = None
    last_frame: str | None = None
    # Re-rendered trades (microseconds) keep their published digits (SimulatorConfig.exact_decimals).
    exact_decimals: bool = False

    def terminate(self, termination: Termination) -> None:
        """Ends the connection (the first reason wins); the handler carries it out.

        A reset is immediate; a close frame follows the frames already queued, as on a real socket.
        """
        if self.termination is None:
            self.termination = termination
            if termination.code is not None:
                try:
                    self.outbox.send_nowait(CLOSE_MARKER)
                    return
                except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
        self.scope.cancel()

    def render(self, event: MarketEvent) -> str:
        if self.microseconds and event.tick is not None:
            raw = trade_payload(event.tick, microseconds=True, exact=self.exact_decimals)
            return combine(event.stream, raw) if self.combined else raw
        return event.combined if self.combined else event.raw


class Hub:
    def __init__(self, limits: Limits, retained_trades: int, *, exact_decimals: bool = False) -> None:
        self.limits = limits
        # Trades by hand go out with the digits they were published with (SimulatorConfig.exact_decimals).
        self.exact_decimals = exact_decimals
        self.ledger = TradeLedger(retained_trades)
        self.counters = Counters()
        self.clients: dict[int, Client] = {}
        self.subscribers: dict[str, dict[Client, None]] = {}
        self.symbols: dict[str, SymbolInfo] = {}  # listed (exchangeInfo); REST knows no others
        # Symbols not trading (status other than TRADING, e.g. BREAK), and delisted ones with their info:
        # no trades of either are published.
        self.trading_status: dict[str, str] = {}
        self.delisted: dict[str, SymbolInfo] = {}
        self.stalled_until = float("-inf")
        self.refused_until = float("-inf")
        self.rest_faults = RestFaults()
        self.source_done = trio.Event()
        self._attempts: deque[float] = deque()
        self._ids = itertools.count(1)
        self._changed = trio.Event()

    # --- change notification (for tests that wait instead of sleeping) ---

    def changed(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_changed(self) -> None:
        await self._changed.wait()

    # --- clients and subscriptions ---

    def add_client(self, combined: bool, microseconds: bool, outbox: trio.MemorySendChannel[list[str]]) -> Client:
        client = Client(id=next(self._ids), combined=combined, microseconds=microseconds, outbox=outbox,
                        exact_decimals=self.exact_decimals)
        self.clients[client.id] = client
        self.counters.connections_accepted += 1
        self.changed()
        return client

    def remove_client(self, client: Client) -> None:
        self.unsubscribe(client, list(client.subscriptions))
        self.clients.pop(client.id, None)
        self.changed()

    def subscribe(self, client: Client, streams: Iterable[str]) -> None:
        for stream in streams:
            client.subscriptions[stream] = None
            self.subscribers.setdefault(stream, {})[client] = None
        self.changed()

    def unsubscribe(self, client: Client, streams: Iterable[str]) -> None:
        for stream in streams:
            client.subscriptions.pop(stream, None)
            subscribers = self.subscribers.get(stream)
            if subscribers is not None:
                subscribers.pop(client, None)
                if not subscribers:
                    del self.subscribers[stream]
        self.changed()

    def subscribed_clients(self) -> int:
        return sum(1 for client in self.clients.values() if client.subscriptions)

    def send_to(self, client: Client, frames: list[str]) -> None:
        """Queue frames for one client; a client whose queue is full is too slow and is dropped (reset)."""
        if client.termination is not None:
            return  # ending: nothing more goes out after its close
        try:
            client.outbox.send_nowait(frames)
        except trio.WouldBlock:
            self.counters.slow_consumers_dropped += 1
            log.info("dropping slow consumer client=%d", client.id)
            client.terminate(Termination(None, "slow consumer"))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the connection is ending already

    # --- faults ---

    def stalled(self) -> bool:
        return trio.current_time() < self.stalled_until

    def refusing(self) -> bool:
        return trio.current_time() < self.refused_until

    def attempt_allowed(self) -> bool:
        """Counts a connection attempt; False beyond Binance's attempts per window."""
        now = trio.current_time()
        attempts = self._attempts
        attempts.append(now)
        while attempts[0] <= now - self.limits.connection_attempt_window:
            attempts.popleft()
        return len(attempts) <= self.limits.max_connection_attempts

    # --- symbols that stop trading ---

    def set_trading_status(self, symbol: str, status: str) -> None:
        """Binance's symbol status: anything but ``TRADING`` (``BREAK``, ``HALT`` ...) keeps the symbol listed
        but publishes none of its trades; ``TRADING`` again resumes them."""
        if symbol not in self.symbols and symbol not in self.delisted:
            self.symbols[symbol] = symbol_info(symbol)
        if status == "TRADING":
            self.trading_status.pop(symbol, None)
        else:
            self.trading_status[symbol] = status
        log.info("symbol=%s status=%s", symbol, status)
        self.changed()

    def delist(self, symbol: str) -> None:
        """Gone from exchangeInfo; REST answers -1121 "Invalid symbol." for it; none of its trades are published."""
        info = self.symbols.pop(symbol, None) or self.delisted.get(symbol) or symbol_info(symbol)
        self.delisted[symbol] = info
        log.info("symbol=%s delisted", symbol)
        self.changed()

    def relist(self, symbol: str) -> None:
        """Listed and trading again."""
        info = self.delisted.pop(symbol, None)
        if info is not None:
            self.symbols.setdefault(symbol, info)
        self.set_trading_status(symbol, "TRADING")

    def trading(self, symbol: str) -> bool:
        return symbol not in self.trading_status and symbol not in self.delisted

    def _tradable(self, events: Sequence[MarketEvent]) -> Sequence[MarketEvent]:
        if not self.trading_status and not self.delisted:
            return events
        return [event for event in events if event.tick is None or self.trading(event.tick.symbol)]

    # --- publishing ---

    def register_symbols(self, infos: Iterable[SymbolInfo]) -> None:
        for info in infos:
            self.symbols.setdefault(info.symbol, info)

    def record(self, events: Sequence[MarketEvent]) -> None:
        """Ground truth first: trades are published (REST-visible) even when the socket is stalled."""
        ticks = [event.tick for event in events if event.tick is not None]
        for tick in ticks:
            if tick.symbol not in self.symbols and tick.symbol not in self.delisted:
                self.symbols[tick.symbol] = symbol_info(tick.symbol)
        self.ledger.add(ticks)

    def route(self, events: Sequence[MarketEvent]) -> dict[Client, list[str]]:
        """Frames per subscribed client; none while stalled (those trades are lost on the socket)."""
        if self.stalled() or not self.subscribers:
            return {}
        per_client: dict[Client, list[str]] = {}
        subscribers = self.subscribers
        for event in events:
            clients = subscribers.get(event.stream)
            if not clients:
                continue
            for client in clients:
                frames = per_client.get(client)
                if frames is None:
                    frames = per_client[client] = []
                frames.append(client.render(event))
        return per_client

    def publish(self, events: Sequence[MarketEvent]) -> None:
        """Record and hand out without waiting: slow clients are dropped."""
        events = self._tradable(events)
        self.record(events)
        for client, frames in self.route(events).items():
            self.send_to(client, frames)
        self.changed()

    async def publish_waiting(self, events: Sequence[MarketEvent]) -> None:
        """Record and hand out, waiting for room in each client's queue (unpaced replay)."""
        events = self._tradable(events)
        self.record(events)
        for client, frames in self.route(events).items():
            if client.termination is not None:
                continue  # ending: nothing more goes out after its close
            try:
                await client.outbox.send(frames)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        self.changed()

    def publish_ticks(self, ticks: Iterable[Tick]) -> None:
        self.publish([trade_event(tick, exact=self.exact_decimals) for tick in ticks])

    def server_shutdown_event(self) -> None:
        """Binance's ``serverShutdown`` event to every connection (they should switch connections)."""
        event_ms = wall_clock_ms()
        raw = f'{{"e":"serverShutdown","E":{event_ms}}}'
        for client in list(self.clients.values()):
            self.send_to(client, [combine("!serverShutdown", raw) if client.combined else raw])
