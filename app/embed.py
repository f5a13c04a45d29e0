"""The service embedded in a Trio program: ``open_service`` and the handle it yields.

    async with open_service(Settings(symbols=("BTCUSDT",))) as md:
        md.latest("BTCUSDT")
        async with md.subscribe(["BTCUSDT"]) as ticks:
            async for batch in ticks: ...

The same supervisor as ``marketdata serve`` (``app.service``) runs the same tasks in the caller's task tree; the
handle reads the state they own and subscribes to the same hubs as the WebSocket feed, with the same rules.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from functools import partial
from typing import Generic, TypeVar

import trio

from app.errors import ServiceError
from app.model import Candle, Tick, ms_from_utc
from app.service import RunningService, open_storage_at_startup, supervise
from app.settings import Settings
from app.store.broadcast import Subscriber
from app.store.candle_query import CandleQuery
from app.store.latest import OverflowPolicy
from app.store.storage import closing_storage
from app.web.errors import ApiError
from app.web.params import parse_interval, parse_limit, parse_symbol
from app.web.symbols import SymbolControl

T = TypeVar("T")

# Batches (of up to 512 ticks, or one aggregator round of candles) a subscription holds for a slow reader
# before it is cut off: as the WebSocket feed's source buffer.
SUBSCRIPTION_BUFFER = 1024
# A reader is handed everything waiting at once, up to about this many items per list.
MAX_ITEMS_PER_BATCH = 2_000

class SubscriptionCutOff(Exception):
    """A subscription's reader fell behind and was cut off; ``reason`` says how far. Nothing is dropped
    silently: subscribe again (and fill the hole from ``candles`` or storage) or read faster."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Subscription(Generic[T]):
    """Lists of ticks (or candle updates) in the order the service made them; ends when the service stops.

    Bounded: it holds at most ``SUBSCRIPTION_BUFFER`` batches for a reader that does not keep up; past that the
    reader is cut off and the next iteration raises ``SubscriptionCutOff``. The service never waits for it.
    """

    def __init__(self, subscriber: Subscriber[T], channel: trio.MemoryReceiveChannel[Sequence[T]],
                 first: Sequence[T] = ()) -> None:
        self._subscriber = subscriber
        self._channel = channel
        self._first = list(first)

    def __aiter__(self) -> Subscription[T]:
        return self

    async def __anext__(self) -> list[T]:
        if self._first:
            first, self._first = self._first, []
            return first
        try:
            batch = list(await self._channel.receive())
        except (trio.EndOfChannel, trio.ClosedResourceError):
            if self._subscriber.cut_off_reason is not None:
                raise SubscriptionCutOff(self._subscriber.cut_off_reason) from None
            raise StopAsyncIteration from None
        # Whatever else is waiting comes in the same list: one wake-up of the reader per burst.
        while len(batch) < MAX_ITEMS_PER_BATCH:
            try:
                batch.extend(self._channel.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                break
        return batch

    def close(self) -> None:
        """Unsubscribes (leaving the ``async with`` block does it too)."""
        self._channel.close()


class MarketData:
    """The running service: latest ticks, candles, subscriptions and the live symbol set.

    Read from the task that opened it or any other task of the same Trio run (the state is owned by the
    service's tasks and only read here).
    """

    def __init__(self, running: RunningService) -> None:
        self._running = running
        state = running.state
        self._settings = state.settings
        self._ticks = state.hub
        self._candles = state.candles
        self._query_candles = CandleQuery(state.candles, state.storage)
        self._symbols = SymbolControl(state.subscriptions, state.ingest.symbols)
        # Names the subscriptions in logs and /metrics' channel depths.
        self._numbers = itertools.count(1)

    @property
    def settings(self) -> Settings:
        return self._settings

    @property
    def http_url(self) -> str:
        """The HTTP API's base URL (``open_service(..., http=True)`` only)."""
        if not self._running.urls:
            raise RuntimeError("the HTTP API is not served: open the service with open_service(settings, http=True)")
        return self._running.urls[0]

    def symbols(self) -> tuple[str, ...]:
        """The symbols subscribed at the exchange now (configured and added)."""
        return self._symbols.served()

    def latest(self, symbol: str) -> Tick | None:
        """The latest tick of ``symbol`` (case-insensitive), None before its first trade."""
        return self._ticks.latest_for(symbol.upper())

    def latest_all(self) -> dict[str, Tick]:
        """The latest tick of every subscribed symbol that has traded (as ``GET /api/ticks``)."""
        hub = self._ticks
        ticks = ((symbol, hub.latest_for(symbol)) for symbol in self.symbols())
        return {symbol: tick for symbol, tick in ticks if tick is not None}

    async def candles(
        self,
        symbol: str,
        interval: str = "1m",
        *,
        limit: int = 500,
        start: datetime | int | None = None,
        end: datetime | int | None = None,
    ) -> list[Candle]:
        """As ``GET /api/candles/{symbol}``: oldest first, the open candle last; ``start``/``end`` (aware
        datetimes or epoch ms) bound the open time; with ``start`` the first ``limit``, without the last."""
        try:
            symbol = parse_symbol(symbol)
            parsed_interval = parse_interval(interval, self._settings.candle_intervals)
            limit = parse_limit(str(limit))
        except ApiError as error:
            raise ServiceError(error.status, error.code, error.message) from None
        start_ms, end_ms = _epoch_ms("start", start), _epoch_ms("end", end)
        if start_ms is not None and end_ms is not None and start_ms > end_ms:
            raise ServiceError(400, "invalid_range", f"start ({start_ms}) is after end ({end_ms})")
        return await self._query_candles(symbol, parsed_interval, start_ms=start_ms, end_ms=end_ms, limit=limit)

    @asynccontextmanager
    async def subscribe(
        self, symbols: Iterable[str], *, buffer: int = SUBSCRIPTION_BUFFER
    ) -> AsyncIterator[Subscription[Tick]]:
        """Every tick of ``symbols`` (``["*"]``: every symbol) from now on, in lists, each symbol in id order."""
        subscriber, channel = self._ticks.subscribe(
            f"python:{next(self._numbers)}", buffer, OverflowPolicy.CUT_OFF, _symbol_filter(symbols)
        )
        subscription = Subscription(subscriber, channel)
        try:
            yield subscription
        finally:
            subscription.close()

    @asynccontextmanager
    async def subscribe_candles(
        self, symbols: Iterable[str], interval: str, *, buffer: int = SUBSCRIPTION_BUFFER
    ) -> AsyncIterator[Subscription[Candle]]:
        """The open candle of each symbol first, then every update of ``interval``: open candles
        (``closed`` false), closed ones, and revisions (``revision > 0``), as the WebSocket feed sends them."""
        try:
            name = parse_interval(interval, self._settings.candle_intervals).name
        except ApiError as error:
            raise ServiceError(error.status, error.code, error.message) from None
        wanted = _symbol_filter(symbols)
        subscriber, channel = self._candles.subscribe_candles(
            f"python:{next(self._numbers)}", buffer, OverflowPolicy.CUT_OFF, wanted, name
        )
        opened = (self._candles.open_candle(symbol, name) for symbol in (wanted or self.symbols()))
        subscription = Subscription(subscriber, channel, [candle for candle in opened if candle is not None])
        try:
            yield subscription
        finally:
            subscription.close()

    async def add_symbol(self, symbol: str) -> None:
        """Subscribes ``symbol`` live (as ``POST /api/symbols``); returns once the exchange acknowledged it."""
        try:
            await self._symbols.add(parse_symbol(symbol))
        except ApiError as error:
            raise ServiceError(error.status, error.code, error.message) from None

    async def remove_symbol(self, symbol: str) -> None:
        """Unsubscribes ``symbol`` live (as ``DELETE /api/symbols/{symbol}``)."""
        try:
            await self._symbols.remove(parse_symbol(symbol))
        except ApiError as error:
            raise ServiceError(error.status, error.code, error.message) from None


@asynccontextmanager
async def open_service(settings: Settings, *, http: bool = False) -> AsyncIterator[MarketData]:
    """Runs the service (``marketdata serve``'s tasks; the HTTP API too with ``http=True``) for the block.

    Leaving the block, by any way including cancellation, stops ingestion and drains the pipeline (ticks and
    candles are written) as SIGINT does for ``serve``, for at most ``DRAIN_TIMEOUT_SECONDS``; a crash of a
    service task cancels the block and propagates. Signals are the caller's to handle.
    """
    async with closing_storage(open_storage_at_startup(settings)) as storage, trio.open_nursery() as nursery:
        running: RunningService = await nursery.start(partial(supervise, settings, storage, http=http))
        try:
            yield MarketData(running)
        finally:
            running.stop()


def _symbol_filter(symbols: Iterable[str]) -> frozenset[str] | None:
    wanted = [symbols] if isinstance(symbols, str) else list(symbols)
    if "*" in wanted:
        return None
    try:
        return frozenset(parse_symbol(symbol) for symbol in wanted)
    except ApiError as error:
        raise ServiceError(error.status, error.code, error.message) from None


def _epoch_ms(name: str, moment: datetime | int | None) -> int | None:
    if moment is None or isinstance(moment, int):
        if moment is not None and moment < 0:
            raise ServiceError(400, "invalid_time", f"{name} must be epoch milliseconds >= 0, got {moment}")
        return moment
    try:
        return ms_from_utc(moment)
    except ValueError as error:
        raise ServiceError(400, "invalid_time", f"{name}: {error}") from None
