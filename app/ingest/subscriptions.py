"""The subscribed symbol set, as the web layer changes it (``POST/DELETE /api/symbols``).

``SubscriptionManager`` is created by the supervisor with the symbols to serve and handed to both the web
layer (wrapped in its ``SymbolControl``) and ``stream_trades``, which attaches the running client to it.
``add`` validates the symbol against Binance's ``exchangeInfo`` and returns once the SUBSCRIBE is acknowledged
on an open connection; ``remove`` once the UNSUBSCRIBE is. Changes are serialised, so concurrent calls for the
same symbol get clear answers.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Protocol

import trio

from app.ingest.binance_stream import StreamClient
from app.ingest.control import ControlError
from app.ingest.exchange_info import DELISTED, TRADING, TRADING_STATUS_CHECK_SECONDS, SymbolDirectory, status_changes
from app.ingest.gap_repair import GapRepair
from app.ingest.rest import RestError
from app.ingest.status import IngestStatus
from app.ingest.urls import trade_stream
from app.model import SYMBOL_PATTERN

log = logging.getLogger(__name__)

# How long the service lets a subscription change wait for ingestion to be running (it starts after the API
# listens, so a change asked for at start-up would otherwise be refused).
ATTACH_WAIT_SECONDS = 3.0



class SubscriptionError(Exception):
    """A subscription change that was refused or could not be made; the message says why."""


class UnknownSymbolError(SubscriptionError):
    def __init__(self, symbol: str, detail: str = "Binance does not list it") -> None:
        super().__init__(f"unknown symbol {symbol!r}: {detail}")
        self.symbol = symbol


class AlreadySubscribedError(SubscriptionError):
    def __init__(self, symbol: str) -> None:
        super().__init__(f"{symbol} is already subscribed")
        self.symbol = symbol


class NotSubscribedError(SubscriptionError):
    def __init__(self, symbol: str) -> None:
        super().__init__(f"{symbol} is not subscribed")
        self.symbol = symbol


class ExchangeUnavailableError(SubscriptionError):
    """The exchange could not be asked (exchangeInfo or the stream is down, or no ack came): try again later."""


class SymbolMemory(Protocol):
    """Where changes of the symbol set are kept across restarts (the storage implements it)."""

    async def set_symbol_added(self, symbol: str, added: bool) -> None:
        """Raises a ``RuntimeError`` (the storage's ``StorageError``) when the change cannot be kept."""
        ...


class SymbolRouter(Protocol):
    """Where changes go in a process without its own exchange connection (an API replica): to the ingest process
    that owns the symbol. Both raise the ``SubscriptionError``s ``SubscriptionManager`` raises."""

    async def add(self, symbol: str) -> None: ...

    async def remove(self, symbol: str) -> None: ...


class SubscriptionManager:
    """The live symbol set. ``configured`` symbols come back at every start from the configuration; every other
    change is written to ``memory`` (whoever made it), so a restart subscribes what was subscribed."""

    def __init__(
        self,
        symbols: Iterable[str],
        status: IngestStatus,
        *,
        configured: Iterable[str] = (),
        memory: SymbolMemory | None = None,
        attach_wait: float = 0.0,
        router: SymbolRouter | None = None,
    ) -> None:
        self.status = status
        self._symbols: dict[str, None] = dict.fromkeys(symbols)
        self._configured = frozenset(configured)
        self._memory = memory
        self._client: StreamClient | None = None
        self._sequencer: GapRepair | None = None
        self._directory: SymbolDirectory | None = None
        self._lock = trio.Lock()
        self._attached = trio.Event()
        self._attach_wait = attach_wait
        self._changed = trio.Event()
        self._router = router

    def symbols(self) -> tuple[str, ...]:
        """The desired symbols, in the order they were added."""
        return tuple(self._symbols)

    def track_external(self, symbol: str) -> None:
        """Serves a symbol ingested by another process (an API replica learns its symbols from the bus)."""
        if symbol not in self._symbols:
            self._symbols[symbol] = None
            self._set_changed()

    def untrack_external(self, symbol: str) -> None:
        """Stops serving a symbol another process no longer ingests."""
        if symbol in self._symbols:
            del self._symbols[symbol]
            self._set_changed()

    async def wait_changed(self) -> None:
        """Returns at the next change of the symbol set."""
        await self._changed.wait()

    def _set_changed(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def attach(self, client: StreamClient, sequencer: GapRepair, directory: SymbolDirectory | None) -> None:
        self._client, self._sequencer, self._directory = client, sequencer, directory
        self._attached.set()

    def detach(self) -> None:
        self._client = self._sequencer = self._directory = None
        self._attached = trio.Event()

    async def add(self, symbol: str) -> None:
        """Subscribes ``symbol`` (case-insensitive) on an open connection, without reconnecting."""
        symbol = _normalise(symbol)
        async with self._lock:
            if self._router is not None:
                # The owning ingest process knows what is subscribed (this one may not have seen a trade yet).
                await self._router.add(symbol)
                self.track_external(symbol)
                return
            if symbol in self._symbols:
                raise AlreadySubscribedError(symbol)
            client, sequencer = await self._running()
            await self._validate(symbol)
            self._symbols[symbol] = None
            sequencer.track(symbol)
            try:
                await client.subscribe(trade_stream(symbol))
            except trio.Cancelled:
                # The caller went away: not subscribed (whatever the connection still sends is dropped).
                self._undo_add(symbol, client, sequencer)
                client.discard(trade_stream(symbol))
                raise
            except (ControlError, trio.TooSlowError) as error:
                self._undo_add(symbol, client, sequencer)
                await client.unsubscribe(trade_stream(symbol))
                if isinstance(error, ControlError):
                    raise SubscriptionError(f"the exchange refused to subscribe {symbol}: {error}") from None
                raise ExchangeUnavailableError(f"no connection acknowledged {symbol} in time") from None
            self._set_changed()
            log.info("subscribed symbol=%s symbols=%d", symbol, len(self._symbols))
        if symbol not in self._configured:
            await self._remember(symbol, added=True)

    async def remove(self, symbol: str) -> None:
        """Unsubscribes ``symbol``. Its trades up to the exchange's last trade id at this moment are emitted first
        (missed ones fetched over REST) or reported as a gap if that takes too long; later ones are dropped."""
        symbol = _normalise(symbol)
        async with self._lock:
            if self._router is not None:
                await self._router.remove(symbol)
                self.untrack_external(symbol)
                return
            if symbol not in self._symbols:
                raise NotSubscribedError(symbol)
            client, sequencer = await self._running()
            del self._symbols[symbol]
            try:
                await sequencer.close_out(symbol)
            finally:
                sequencer.forget(symbol)
            self._set_changed()
            await client.unsubscribe(trade_stream(symbol))
            log.info("unsubscribed symbol=%s symbols=%d", symbol, len(self._symbols))
        # A configured symbol is subscribed again at the next start: the configuration says it is wanted.
        await self._remember(symbol, added=False)

    async def _remember(self, symbol: str, *, added: bool) -> None:
        """Keeps the change for the next start; the live change stands even if that fails (logged)."""
        if self._memory is None:
            return
        try:
            await self._memory.set_symbol_added(symbol, added)
        except RuntimeError as error:
            log.error("symbol change not stored symbol=%s added=%s error=%s: it will not survive a restart",
                      symbol, added, error)

    async def watch_trading_status(self, every: float = TRADING_STATUS_CHECK_SECONDS) -> None:
        """Checks the symbols' exchangeInfo status at start-up and then every ``every`` seconds.

        A symbol that stops trading is said once (WARNING). In ``BREAK`` (or any status but TRADING) it stays
        subscribed, silent, until it trades again; delisted (exchangeInfo omits it, REST answers -1121) it is
        unsubscribed and no longer backfilled or checked. Either way its open candles close with the trades
        they have, and no empty candles follow while it is stopped. When exchangeInfo cannot be fetched the
        symbols stay as they are (said once until it can be fetched again).
        """
        unreachable = False
        while True:
            if self._directory is not None:
                try:
                    listed = await self._directory.refresh()
                except RestError as error:
                    if not unreachable:
                        log.warning("trading status not checked: exchangeInfo unavailable: %s", error)
                    unreachable = True
                else:
                    unreachable = False
                    await self._apply_trading_status(listed)
            await trio.sleep(every)

    async def _apply_trading_status(self, listed: Mapping[str, str]) -> None:
        known = {symbol: status.trading_status for symbol, status in self.status.symbols.items()}
        stopped = [symbol for symbol, status in known.items() if status != TRADING]
        for symbol, new in status_changes(known, listed, dict.fromkeys([*self._symbols, *stopped])):
            self.status.symbol(symbol).trading_status = new
            if new == TRADING:
                log.warning("symbol trading again symbol=%s", symbol)
            elif new == DELISTED:
                log.warning("symbol delisted symbol=%s: exchangeInfo no longer lists it; unsubscribed, no more "
                            "backfill or last-id checks for it", symbol)
                await self._drop(symbol)
            else:
                log.warning("symbol stopped trading symbol=%s status=%s: kept subscribed until it trades again",
                            symbol, new)

    async def _drop(self, symbol: str) -> None:
        async with self._lock:
            if symbol not in self._symbols:
                return
            client, sequencer = await self._running()
            del self._symbols[symbol]
            sequencer.forget(symbol)
            self._set_changed()
            await client.unsubscribe(trade_stream(symbol))

    def _undo_add(self, symbol: str, client: StreamClient, sequencer: GapRepair) -> None:
        del self._symbols[symbol]
        sequencer.forget(symbol)

    async def _running(self) -> tuple[StreamClient, GapRepair]:
        with trio.move_on_after(self._attach_wait):
            await self._attached.wait()
        if self._client is None or self._sequencer is None:
            raise ExchangeUnavailableError("ingestion is not running")
        return self._client, self._sequencer

    async def _validate(self, symbol: str) -> None:
        if self._directory is None:
            return
        try:
            status = await self._directory.status_of(symbol)
        except RestError as error:
            raise ExchangeUnavailableError(f"cannot check {symbol} against exchangeInfo: {error}") from None
        if status is None:
            raise UnknownSymbolError(symbol)
        if status != TRADING:
            raise UnknownSymbolError(symbol, f"its status is {status}, not TRADING")


def _normalise(symbol: str) -> str:
    normalised = symbol.strip().upper()
    if not SYMBOL_PATTERN.match(normalised):
        raise UnknownSymbolError(symbol, "a symbol is 2-20 letters or digits, e.g. BTCUSDT")
    return normalised
