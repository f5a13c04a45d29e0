"""``marketdata api``: a stateless replica serving the REST API and the /ws feed for every shard, fed by the bus.

    take_snapshot ─┬─ latest ticks ─▶ TickHub          (before anything is served)
                   └─ current candles ─▶ CandleFeed (continued, as a new leader continues them)
    follow_stream (ticks, from the snapshot's entry) ──▶ bus_ticks ──ticks──▶ fan_out ──▶ aggregate, /ws
    follow_symbol_changes (symbols the shards' leaders added or removed) ──▶ the served symbols
    serve_http: the same app as ``marketdata serve``; closed candle history from DATABASE_URL (the persisters')

Nothing falls between the snapshot and the stream: the snapshot is taken atomically with the stream position it
belongs to, and trades the stream repeats are recognised by their ids. Entries lost to trimming, or to a
restarted Redis, and trades the leader could not publish (a hole REST could not fill) become a gap of each symbol
concerned: shown in /api/symbols and /health, and told to the symbol's /ws subscribers (``{"op": "gap"}``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any

import trio

from app.bus.follow import BusEntry, StreamGap, follow_stream
from app.bus.keys import BusKeys
from app.bus.snapshot import BusSnapshot, take_snapshot
from app.bus.symbol_requests import added_symbols, stream_end
from app.clock import wall_clock_ms
from app.convert import ticks_from_bus
from app.ingest.status import ConnectionStatus, IngestStatus
from app.ingest.subscriptions import SubscriptionManager
from app.model import Candle, Gap, Tick
from app.roles.opening import open_bus, required_bus_url
from app.roles.signals import stop_on_signal
from app.roles.symbol_routing import BusSymbolRouter, follow_symbol_changes
from app.settings import Settings
from app.state import ServiceState
from app.store.aggregator import CandleFeed, aggregate
from app.store.latest import OverflowPolicy, TickHub, fan_out
from app.store.storage import Storage, closing_storage
from app.web.app import create_app
from app.web.open_files import ws_client_limit
from app.web.server import serve_http

log = logging.getLogger(__name__)

BUS_CONNECTION = "bus"
AGGREGATOR_BUFFER = 256
BUS_GAP_REASON = "bus entries trimmed (or lost to a restarted Redis) before this replica read them"
UNPUBLISHED_REASON = "not published by the ingest leader (the exchange could not serve them)"


async def run_api(
    settings: Settings,
    open_storage: Callable[[Settings], Awaitable[Storage]],
    *,
    task_status: trio.TaskStatus[Sequence[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    bus_url = required_bus_url(settings, "api")
    keys = BusKeys(settings.bus_prefix)
    async with closing_storage(open_storage(settings)) as storage, open_bus(bus_url) as redis:
        # Symbol changes followed from here; symbols added before are in the hash read after it.
        changes_position = await stream_end(redis, keys.symbol_changes)
        added = await added_symbols(redis, keys)
        snapshot = await take_snapshot(redis, keys)
        status = IngestStatus()
        status.connections[BUS_CONNECTION] = ConnectionStatus(BUS_CONNECTION, bus_url, connected=True,
                                                              connected_at=trio.current_time())
        # Changes of the symbol set go to the ingest shard owning the symbol (this process has no exchange).
        served = [*sorted(snapshot.latest), *(symbol for symbol in added if symbol not in snapshot.latest)]
        subscriptions = SubscriptionManager(served, status, router=BusSymbolRouter(redis, keys))
        hub = TickHub()
        await hub.publish(list(snapshot.latest.values()))
        candles = CandleFeed(settings.candle_intervals)
        configured = {interval.name for interval in settings.candle_intervals}
        for candle in snapshot.candles:
            if candle.interval in configured:
                candles.builder.continue_candle(candle)
        for symbol, tick in snapshot.latest.items():
            symbol_status = status.symbol(symbol)
            symbol_status.last_trade_id = tick.trade_id
        state = ServiceState(settings=settings, hub=hub, candles=candles, storage=storage, ingest=status,
                             subscriptions=subscriptions)
        ticks_send, ticks_receive = trio.open_memory_channel[list[Tick]](settings.tick_buffer)
        closed_send, closed_receive = trio.open_memory_channel[Sequence[Candle]](1)
        _, aggregator_input = hub.subscribe("aggregator", AGGREGATOR_BUFFER, OverflowPolicy.BACKPRESSURE)
        async with trio.open_nursery() as nursery:
            app = create_app(state, ws_clients=ws_client_limit(settings.max_ws_clients))
            urls = await nursery.start(serve_http, app, settings.http_host, settings.http_port)
            log.warning("role=api bus=%s database=%s position=%s symbols=%d urls=%s", bus_url,
                        settings.database_url, snapshot.position.entry_id.decode(), len(snapshot.latest),
                        ",".join(urls))
            nursery.start_soon(stop_on_signal, nursery.cancel_scope, "api")
            nursery.start_soon(follow_symbol_changes, redis, keys, subscriptions, changes_position)
            nursery.start_soon(bus_ticks, redis, keys, snapshot, status, subscriptions, ticks_send)
            nursery.start_soon(fan_out, ticks_receive, hub)
            nursery.start_soon(partial(aggregate, aggregator_input, closed_send, candles, is_live=status.is_live))
            # Closed candles are the persisters' to store: a replica only serves them.
            nursery.start_soon(_discard, closed_receive)
            task_status.started(urls)


async def bus_ticks(
    redis: Any,
    keys: BusKeys,
    snapshot: BusSnapshot,
    status: IngestStatus,
    subscriptions: SubscriptionManager,
    ticks: trio.MemorySendChannel[list[Tick]],
) -> None:
    """The bus's ticks after the snapshot, each once, into ``ticks``; lost entries become per-symbol gaps."""
    last_ids = dict(snapshot.last_trade_ids)
    entries_send, entries_receive = trio.open_memory_channel[list[BusEntry | StreamGap]](16)
    async with ticks, trio.open_nursery() as nursery:
        nursery.start_soon(follow_stream, redis, keys.ticks, b"t", snapshot.position, entries_send)
        # Symbols whose next trade on the stream may follow entries lost on the bus (trimmed, a restarted Redis).
        after_bus_gap: set[str] = set()
        async for items in entries_receive:
            batch: list[Tick] = []
            for item in items:
                if isinstance(item, StreamGap):
                    after_bus_gap.update(last_ids)
                    continue
                for tick in ticks_from_bus(item.payload):
                    last = last_ids.get(tick.symbol)
                    if last is not None and tick.trade_id <= last:
                        continue  # in the snapshot already
                    if last is not None and tick.trade_id > last + 1:
                        # Trade ids are consecutive per symbol: a jump is trades lost, on the bus or before it.
                        reason = BUS_GAP_REASON if tick.symbol in after_bus_gap else UNPUBLISHED_REASON
                        _record_gap(status, tick.symbol, last + 1, tick.trade_id - 1, reason)
                    after_bus_gap.discard(tick.symbol)
                    if last is None and tick.symbol not in subscriptions.symbols():
                        subscriptions.track_external(tick.symbol)
                    last_ids[tick.symbol] = tick.trade_id
                    batch.append(tick)
            now = trio.current_time()
            for tick in batch:
                symbol_status = status.symbol(tick.symbol)
                symbol_status.last_trade_id = tick.trade_id
                symbol_status.last_tick_at = now
                symbol_status.ticks_received += 1
            connection = status.connections[BUS_CONNECTION]
            connection.last_frame_at = now
            connection.frames_received += len(items)
            if batch:
                await ticks.send(batch)


def _record_gap(status: IngestStatus, symbol: str, first: int, last: int, reason: str) -> None:
    """Recorded in /api/symbols and /health, and told to the symbol's /ws subscribers (``GapNotices``)."""
    gap = Gap(symbol, first, last, reason, wall_clock_ms())
    log.error("trades lost symbol=%s trades=%d..%d reason=%s", symbol, first, last, reason)
    symbol_status = status.symbol(symbol)
    symbol_status.gaps_found += 1
    symbol_status.record_gap(gap)


async def _discard(closed: trio.MemoryReceiveChannel[Sequence[Candle]]) -> None:
    async for _ in closed:
        pass
