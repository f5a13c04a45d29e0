"""``marketdata ingest``: one shard's ingest, as the leader publishing to the bus or as its hot standby.

    campaign (lease) ─────────leadership──────────┐
    stream_trades (connected, subscribed, gap repair) ──ticks──▶ publish_shard ──▶ Redis streams
    serve_symbol_requests (symbols added/removed at run time on a replica, for this shard) ──▶ subscriptions
    serve_http: /health, /metrics

Leader and standby run the same tasks: both are connected and sequencing; only the lease holder publishes.
SIGINT/SIGTERM release the lease (a standby takes over at once instead of after the TTL) and stop.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from functools import partial
from typing import Any, cast

import attrs
import trio

from app.bus.connection import BUS_UNAVAILABLE
from app.bus.keys import BusKeys
from app.bus.lease import Lease, LeaseTimings, campaign, new_token
from app.bus.symbol_requests import added_symbols, stream_end
from app.ingest.rest import BinanceRest
from app.ingest.status import IngestStatus
from app.ingest.subscriptions import SubscriptionManager
from app.ingest.trades import stream_trades
from app.model import Tick
from app.roles.opening import open_bus, required_bus_url
from app.roles.shard_publisher import ShardBus, ShardStatus, publish_shard
from app.roles.sharding import owned_symbols
from app.roles.signals import stop_on_signal
from app.roles.symbol_routing import serve_symbol_requests
from app.settings import Settings
from app.web.role_app import create_role_app
from app.web.server import serve_http

log = logging.getLogger(__name__)


async def run_ingest(
    settings: Settings, *, task_status: trio.TaskStatus[Sequence[str]] = trio.TASK_STATUS_IGNORED
) -> None:
    """Runs the shard until a signal (or cancellation); reports the HTTP URLs once serving."""
    bus_url = required_bus_url(settings, "ingest")
    shard = settings.shard
    symbols = owned_symbols(settings.symbols, settings.shard_index, settings.shard_count)
    keys = BusKeys(settings.bus_prefix)
    async with open_bus(bus_url) as redis:
        # Requests read from this position on; symbols added before it are in the hash read after it.
        requests_position = await stream_end(redis, keys.symbol_requests)
        added = owned_symbols(await added_symbols(redis, keys), settings.shard_index, settings.shard_count)
        symbols = (*symbols, *(symbol for symbol in added if symbol not in symbols))
        lease = Lease(redis, keys.lease(shard), new_token(f"ingest-{shard}-{os.getpid()}"),
                      LeaseTimings(settings.lease_ttl_seconds))
        ingest_status = IngestStatus()
        shard_status = ShardStatus()
        subscriptions = SubscriptionManager(symbols, ingest_status)
        events_send, events_receive = trio.open_memory_channel[list[Tick] | bool](settings.tick_buffer)
        rest = BinanceRest(settings.binance_rest_url, ingest_status)
        bus = ShardBus(redis, keys, lease.key, lease.token, settings.bus_max_entries)

        def health() -> tuple[bool, dict[str, object]]:
            connected = sum(1 for c in ingest_status.connections.values() if c.connected)
            body: dict[str, object] = {
                "shard": shard, "symbols": list(subscriptions.symbols()), "leading": shard_status.leading,
                "token": lease.token, "connections_up": connected, **attrs.asdict(shard_status),
            }
            return connected > 0 or not symbols, body

        try:
            async with trio.open_nursery() as nursery:
                app = create_role_app("ingest", health, {"shard": shard_status, "ingest": ingest_status})
                urls = await nursery.start(serve_http, app, settings.http_host, settings.http_port)
                log.warning("role=ingest shard=%s symbols=%s token=%s urls=%s", shard, ",".join(symbols),
                            lease.token, ",".join(urls))
                nursery.start_soon(stop_on_signal, nursery.cancel_scope, "ingest")
                nursery.start_soon(serve_symbol_requests, redis, keys, settings.shard_index, settings.shard_count,
                                   subscriptions, lambda: shard_status.leading, requests_position)
                async with events_send:
                    nursery.start_soon(campaign, lease, events_send.clone())
                    # The ingest output is the events channel (ticks), merged with leadership changes.
                    ticks_send = cast(Any, events_send.clone())
                    nursery.start_soon(partial(stream_trades, settings, subscriptions, ticks_send, {}))
                nursery.start_soon(partial(
                    publish_shard, events_receive, bus, settings.candle_intervals,
                    partial(fetch_trades, rest), partial(_last_trade_ids, rest, subscriptions), shard_status,
                    max_hole_trades=settings.max_backfill_trades, is_live=ingest_status.is_live,
                ))
                task_status.started(urls)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                try:
                    await lease.release()
                except BUS_UNAVAILABLE as error:
                    # Cancelled from outside, the client's connections go too: the lease then expires by its TTL.
                    log.warning("lease not released key=%s error=%s: it expires by its TTL", lease.key, error)
                await rest.aclose()


async def fetch_trades(rest: BinanceRest, symbol: str, first_id: int, last_id: int) -> list[Tick]:
    """Trades ``first_id..last_id`` of ``symbol`` over REST (historicalTrades pages), in id order."""
    trades: list[Tick] = []
    next_id = first_id
    while next_id <= last_id:
        page = await rest.historical_trades(symbol, next_id)
        page = [tick for tick in page if next_id <= tick.trade_id <= last_id]
        if not page:
            break
        trades.extend(page)
        next_id = page[-1].trade_id + 1
    return trades


async def _last_trade_ids(rest: BinanceRest, subscriptions: SubscriptionManager) -> dict[str, int]:
    return {symbol: last_id for symbol, last_id in (await rest.last_trade_ids(subscriptions.symbols())).items()
            if last_id >= 0}
