"""The supervisor: creates every channel, starts every task, and owns shutdown.

Data flow (each arrow is a bounded Trio memory channel, closed by its sender)::

    stream_trades ──ticks──▶ fan_out (TickHub: latest tick per symbol)
                                ├──tick batches──▶ aggregate (CandleFeed) ──closed candles──▶ persist_candles
                                │              seed requests ⇅ seeds: seed_candles (REST klines + aggTrades)
                                │                        └──candle updates──▶ WebSocket feed subscribers
                                ├──tick batches──▶ persist_ticks
                                └──tick batches──▶ WebSocket feed subscribers (cut off when slow)
    serve_http (Hypercorn + Quart) reads the hub, the candle feed and storage.
    prune_ticks deletes ticks past the retention; at start-up ``restore`` rebuilds candles from storage.

Shutdown: SIGINT/SIGTERM cancels ingestion only; the closed channels then drain the pipeline in order
(fan-out, aggregator, writers), and only then is the HTTP server stopped. A second signal, or a drain that
takes longer than ``DRAIN_TIMEOUT_SECONDS``, cancels everything at once.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable, Sequence
from functools import partial

import attrs
import trio

from app.backoff import Backoff
from app.ingest.candle_seed import seed_candles
from app.ingest.status import IngestStatus
from app.ingest.subscriptions import ATTACH_WAIT_SECONDS, SubscriptionManager
from app.ingest.trades import stream_trades
from app.model import Candle, CandleSeed, SeedRequest, Tick
from app.settings import Settings
from app.startup import StartupError, listening, redact_url
from app.state import ServiceState
from app.store.aggregator import CandleFeed, Seeding, aggregate
from app.store.broadcast import ChannelDepth
from app.store.candles import LateTrade
from app.store.latest import OverflowPolicy, TickHub, fan_out
from app.store.persist import (
    STORAGE_RETRY,
    PersistStatus,
    persist_candles,
    persist_late_trades,
    persist_ticks,
    prune_ticks,
)
from app.store.postgres import PostgresStorage
from app.store.restore import restore
from app.store.sqlite import SQLiteStorage
from app.store.storage import Storage, StorageError, closing_storage
from app.web.app import create_app
from app.web.open_files import ws_client_limit
from app.web.server import serve_http

log = logging.getLogger(__name__)

DRAIN_TIMEOUT_SECONDS = 10.0
# Buffers of internal subscribers, in batches (of up to 512 ticks each): at most 131,072 ticks waiting each.
AGGREGATOR_BUFFER = 256
PERSISTENCE_BUFFER = 256
# Batches of closed candles (one batch per aggregator round) waiting for the database writer.
CLOSED_CANDLE_BUFFER = 1024
# Candles waiting for their seed (one per symbol and interval at start-up); beyond it a candle stays incomplete.
SEED_REQUEST_BUFFER = 4096
# Batches of late trades for candles no longer in memory, waiting to revise the stored candles.
LATE_TRADE_BUFFER = 64


async def open_storage(settings: Settings) -> Storage:
    """SQLite for ``sqlite:///PATH``, PostgreSQL for ``postgresql://...`` (the settings accept nothing else)."""
    path = settings.sqlite_path
    if path is None:
        return await PostgresStorage.open(settings.database_url)
    return await SQLiteStorage.open(path)


async def open_storage_at_startup(settings: Settings) -> Storage:
    """``open_storage``, its failure a one-line ``StartupError`` naming DATABASE_URL (password redacted)."""
    try:
        return await open_storage(settings)
    except StorageError as error:
        raise StartupError(f"cannot use DATABASE_URL={redact_url(settings.database_url)}: {error}") from None


async def run(
    settings: Settings,
    *,
    task_status: trio.TaskStatus[Sequence[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the service until a signal, or until a task crashes (the crash propagates)."""
    async with closing_storage(open_storage_at_startup(settings)) as storage:
        await _supervise(settings, storage, http=True, on_signals=True,
                         started=lambda running: task_status.started(running.urls))


@attrs.frozen
class RunningService:
    """What the supervisor hands its caller once every task runs: the state, the HTTP URLs, and the stop."""

    state: ServiceState
    # Empty without the HTTP server.
    urls: Sequence[str]
    _ingest_scope: trio.CancelScope
    _service_scope: trio.CancelScope

    def stop(self) -> None:
        """Stops ingestion and lets the pipeline drain, then the rest; everything at once after the drain
        timeout (as the first SIGINT does)."""
        self._ingest_scope.cancel()
        self._service_scope.deadline = min(self._service_scope.deadline,
                                           trio.current_time() + DRAIN_TIMEOUT_SECONDS)


async def supervise(
    settings: Settings,
    storage: Storage,
    *,
    http: bool,
    task_status: trio.TaskStatus[RunningService] = trio.TASK_STATUS_IGNORED,
) -> None:
    """The service's tasks for an embedding caller (``app.embed.open_service``): no signal handling. Start-up
    can be cancelled; once running, the tasks are shielded from the caller's cancellation so that
    ``RunningService.stop`` drains the pipeline first (within the drain timeout)."""
    with trio.CancelScope() as scope:

        def started(running: RunningService) -> None:
            scope.shield = True
            task_status.started(running)

        await _supervise(settings, storage, http=http, on_signals=False, started=started)


async def _supervise(
    settings: Settings,
    storage: Storage,
    *,
    http: bool,
    on_signals: bool,
    started: Callable[[RunningService], object],
) -> None:
    hub = TickHub()
    candle_feed = CandleFeed(settings.candle_intervals, seed_edges=True)
    try:
        symbols = await _symbols_to_serve(settings, storage)
        # Before any tick: reload candles and rebuild open ones from stored ticks; store candles lost in a crash.
        restored = await restore(storage, candle_feed.builder, symbols)
        await storage.write_candles(restored.recovered)
    except StorageError as error:
        raise StartupError(f"cannot restore from DATABASE_URL={redact_url(settings.database_url)}: {error}") from None
    persist_status = PersistStatus()
    ticks_send, ticks_receive = trio.open_memory_channel[list[Tick]](settings.tick_buffer)
    closed_send, closed_receive = trio.open_memory_channel[Sequence[Candle]](CLOSED_CANDLE_BUFFER)
    _, aggregator_input = hub.subscribe("aggregator", AGGREGATOR_BUFFER, OverflowPolicy.BACKPRESSURE)
    persistence, persistence_input = hub.subscribe("persistence", PERSISTENCE_BUFFER, OverflowPolicy.BACKPRESSURE)
    ingest_status = IngestStatus()
    subscriptions = SubscriptionManager(symbols, ingest_status, configured=settings.symbols, memory=storage,
                                        attach_wait=ATTACH_WAIT_SECONDS)
    state = ServiceState(
        settings=settings, hub=hub, candles=candle_feed, storage=storage, ingest=ingest_status,
        subscriptions=subscriptions, persist=persist_status, persistence=persistence,
        ingest_backlog=partial(channel_depth, "ingest", ticks_receive),
    )
    ingest_scope = trio.CancelScope()
    seed_requests_send, seed_requests_receive = trio.open_memory_channel[SeedRequest](SEED_REQUEST_BUFFER)
    seeds_send, seeds_receive = trio.open_memory_channel[CandleSeed](SEED_REQUEST_BUFFER)
    late_send, late_receive = trio.open_memory_channel[Sequence[LateTrade]](LATE_TRADE_BUFFER)

    async with trio.open_nursery() as service:
        urls: Sequence[str] = ()
        if http:
            # One socket per /ws client: the open-file limit is raised for MAX_WS_CLIENTS (or says how many fit).
            app = create_app(state, ws_clients=ws_client_limit(settings.max_ws_clients))
            with listening("the HTTP API", settings.http_host, settings.http_port, "--port or HTTP_PORT"):
                urls = await service.start(serve_http, app, settings.http_host, settings.http_port)
            log.info("serving urls=%s", ",".join(urls))
        if on_signals:
            service.start_soon(_stop_on_signal, ingest_scope, service.cancel_scope)
        service.start_soon(
            partial(prune_ticks, storage, persist_status, settings.tick_retention_days,
                    newest_trade_ms=hub.newest_trade_ms, keep_from_ms=candle_feed.builder.earliest_open_time_ms)
        )
        async with trio.open_nursery() as pipeline:
            pipeline.start_soon(
                _run_ingest, ingest_scope, settings, subscriptions, storage, ticks_send
            )
            pipeline.start_soon(fan_out, ticks_receive, hub)
            pipeline.start_soon(
                partial(aggregate, aggregator_input, closed_send, candle_feed, is_live=ingest_status.is_live,
                        is_stopped=ingest_status.is_stopped,
                        seeding=Seeding(seed_requests_send, seeds_receive), late_trades=late_send)
            )
            pipeline.start_soon(seed_candles, seed_requests_receive, seeds_send,
                                settings.binance_rest_url, ingest_status)
            pipeline.start_soon(partial(persist_ticks, persistence_input, storage, persist_status, _storage_retry(),
                                        backlog_limit=settings.storage_backlog_ticks))
            pipeline.start_soon(persist_candles, closed_receive, storage, persist_status, _storage_retry())
            pipeline.start_soon(persist_late_trades, late_receive, storage, persist_status, _storage_retry())
            started(RunningService(state, urls, ingest_scope, service.cancel_scope))
        log.info("pipeline drained; stopping the HTTP server")
        service.cancel_scope.cancel()


def _storage_retry() -> Backoff:
    return Backoff(STORAGE_RETRY)


def channel_depth(name: str, channel: trio.MemoryReceiveChannel[list[Tick]]) -> ChannelDepth:
    statistics = channel.statistics()
    return ChannelDepth(name, statistics.current_buffer_used, int(statistics.max_buffer_size))


async def _symbols_to_serve(settings: Settings, storage: Storage) -> tuple[str, ...]:
    """The configured symbols, then those added at run time before the last stop (``POST /api/symbols``)."""
    added = [symbol for symbol in await storage.added_symbols() if symbol not in settings.symbols]
    if added:
        log.info("subscribing symbols added at run time symbols=%s", ",".join(added))
    return (*settings.symbols, *added)


async def _run_ingest(
    scope: trio.CancelScope,
    settings: Settings,
    subscriptions: SubscriptionManager,
    storage: Storage,
    ticks: trio.MemorySendChannel[list[Tick]],
) -> None:
    with scope:
        # Resume where storage stopped: the trades since then are backfilled (bounded by MAX_BACKFILL_TRADES).
        resume_from = await storage.last_trade_ids()
        await stream_trades(settings, subscriptions, ticks, resume_from)


async def _stop_on_signal(ingest_scope: trio.CancelScope, service_scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.warning("received %s: stopping ingestion and draining", signal.Signals(signum).name)
            ingest_scope.cancel()
            break
        with trio.move_on_after(DRAIN_TIMEOUT_SECONDS):
            async for signum in signals:
                log.warning("received %s again: stopping now", signal.Signals(signum).name)
                break
        service_scope.cancel()
