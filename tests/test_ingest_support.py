"""Helpers for the ingest tests (no tests here): trades to publish, and the ingest running against a simulator."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from decimal import Decimal

import attrs
import trio

from app.ingest.status import IngestStatus
from app.ingest.subscriptions import SubscriptionManager
from app.ingest.trades import stream_trades
from app.model import Tick
from app.replay.simulator import Simulator
from app.settings import Settings

T0_MS = 1_723_161_255_342


def make_tick(symbol: str, trade_id: int, t0_ms: int = T0_MS) -> Tick:
    """A distinct, deterministic trade: price, quantity and times all derive from the id (and ``t0_ms``)."""
    return Tick(
        symbol=symbol,
        price=Decimal(60_000 + trade_id % 997) + Decimal(trade_id % 100) / 100,
        quantity=Decimal(trade_id % 13 + 1) / 1000,
        trade_time_ms=t0_ms + trade_id,
        event_time_ms=t0_ms + trade_id + 1,
        trade_id=trade_id,
        is_buyer_maker=trade_id % 3 == 0,
    )


def trades(ticks: Iterable[Tick]) -> list[tuple[str, int, Decimal, Decimal, int, bool]]:
    """What must match between the exchange and the output: everything but the event time, which REST
    backfill cannot know (it reports the trade time in its place)."""
    return [(t.symbol, t.trade_id, t.price, t.quantity, t.trade_time_ms, t.is_buyer_maker) for t in ticks]


def make_ticks(symbol: str, first: int, count: int, t0_ms: int = T0_MS) -> list[Tick]:
    return [make_tick(symbol, trade_id, t0_ms) for trade_id in range(first, first + count)]


@attrs.define
class Ingest:
    """A running ``stream_trades``: its subscription manager, status and everything it emitted so far."""

    subscriptions: SubscriptionManager
    status: IngestStatus
    received: list[Tick] = attrs.Factory(list)
    last_ids: dict[str, int] = attrs.Factory(dict)
    _changed: trio.Event = attrs.Factory(trio.Event)

    def of(self, symbol: str) -> list[Tick]:
        return [tick for tick in self.received if tick.symbol == symbol]

    def note(self, tick: Tick) -> None:
        self.received.append(tick)
        self.last_ids[tick.symbol] = tick.trade_id
        self._changed.set()
        self._changed = trio.Event()

    async def wait_received(self, count: int, symbol: str | None = None) -> None:
        while len(self.received if symbol is None else self.of(symbol)) < count:
            await self._changed.wait()

    async def wait_last_id(self, symbol: str, trade_id: int) -> None:
        while self.last_ids.get(symbol, -1) < trade_id:
            await self._changed.wait()


@asynccontextmanager
async def running_ingest(
    simulator: Simulator,
    symbols: Iterable[str],
    resume_from: Mapping[str, int] | None = None,
    buffer: int = 1024,
    **settings: object,
) -> AsyncIterator[Ingest]:
    fields: dict[str, object] = {
        "symbols": tuple(symbols), "binance_ws_url": simulator.ws_url, "binance_rest_url": simulator.rest_url,
    }
    config = Settings(**{**fields, **settings})  # type: ignore[arg-type]
    status = IngestStatus()
    ingest = Ingest(SubscriptionManager(config.symbols, status), status)
    ticks_send, ticks_receive = trio.open_memory_channel[list[Tick]](buffer)

    async def consume() -> None:
        async for batch in ticks_receive:
            for tick in batch:
                ingest.note(tick)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consume)
        await nursery.start(stream_trades, config, ingest.subscriptions, ticks_send, resume_from)
        yield ingest
        nursery.cancel_scope.cancel()


async def receive_ticks(batches: trio.MemoryReceiveChannel[list[Tick]], count: int) -> list[Tick]:
    """The next ``count`` ticks from a channel of batches (what the stream client hands on, one read each)."""
    received: list[Tick] = []
    while len(received) < count:
        received.extend(await batches.receive())
    return received
