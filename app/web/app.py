"""The Quart (quart-trio) application: routes read the service's state, never mutate the data flow.

``create_app`` is the web layer's wiring: from the parts the supervisor built (``ServiceState``) it makes, once,
the narrow handle each web module takes (routes, health, metrics, the feed), so no module sees more than it
reads.
"""

from __future__ import annotations

from typing import Any, cast

import trio
from quart import Response, websocket
from quart_trio import QuartTrio

from app.state import ServiceState
from app.store.candle_query import CandleQuery
from app.web.admin import AdminAccess
from app.web.client_limit import ClientLimit
from app.web.dashboard import STATIC_DIR, STATIC_URL_PATH, register_dashboard
from app.web.errors import FEED_PATH, error_response, register_error_handlers
from app.web.feed import FeedLimits, FeedSources, FeedStats, RenderCache, serve_feed
from app.web.health import HealthSources
from app.web.metrics import MetricSources, metrics_registry
from app.web.openapi import openapi_document
from app.web.query import accepted_parameters, register_query_check
from app.web.routes import ApiSources, register_routes
from app.web.symbols import SymbolControl

# Request bodies are one small JSON object; anything larger is refused with 413.
MAX_BODY_BYTES = 64 * 1024


def create_app(
    state: ServiceState,
    feed_limits: FeedLimits | None = None,
    *,
    admin: AdminAccess | None = None,
    ws_clients: ClientLimit | None = None,
) -> QuartTrio:
    app = QuartTrio("marketdata", static_folder=str(STATIC_DIR), static_url_path=STATIC_URL_PATH)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    feed_stats = FeedStats()
    render_cache = RenderCache()
    limits = feed_limits or FeedLimits()
    send_slots = trio.CapacityLimiter(limits.concurrent_sends)
    settings = state.settings
    admin = admin or AdminAccess(token=settings.admin_token, host=settings.http_host)
    admin.warn_if_disabled()
    clients = ws_clients or ClientLimit(settings.max_ws_clients)
    symbols = SymbolControl(state.subscriptions, state.ingest.symbols)
    health = HealthSources(
        ingest=state.ingest, ticks=state.hub, persist=state.persist,
        stale_after_seconds=settings.stale_after_seconds,
        writer_depth=None if state.persistence is None else state.persistence.depth,
    )
    metrics = MetricSources(
        ingest=state.ingest, ticks=state.hub, candles=state.candles, persist=state.persist, health=health,
        max_subscriptions_per_connection=settings.max_subscriptions_per_connection,
        ingest_backlog=state.ingest_backlog,
    )
    api = ApiSources(ticks=state.hub, candles=CandleQuery(state.candles, state.storage), symbols=symbols,
                     intervals=settings.candle_intervals, health=health)
    feed_sources = FeedSources(
        ticks=state.hub, candles=state.candles, served_symbols=symbols.served,
        intervals=tuple(interval.name for interval in settings.candle_intervals),
        max_subscriptions_per_connection=settings.max_subscriptions_per_connection, gaps=state.ingest.gap_notices,
    )
    register_error_handlers(app)
    document = openapi_document(settings)
    register_query_check(app, accepted_parameters(document))
    register_routes(app, api, metrics_registry(metrics, feed_stats, clients), admin, document)
    register_dashboard(app, settings)

    @app.websocket(FEED_PATH)
    async def feed() -> Response | None:
        # Refused before the upgrade: the client gets a plain HTTP 503 in the error shape, not a WebSocket.
        if not clients.admit():
            refusal = error_response(503, "too_many_clients",
                                     f"{clients.limit} WebSocket clients are connected, the most this service "
                                     "serves (MAX_WS_CLIENTS, or fewer if the open-file limit is lower); try "
                                     "again later")
            refusal.headers["Retry-After"] = "5"
            return refusal
        try:
            # The object itself, not the context-local proxy: the feed's tasks use it directly.
            await serve_feed(feed_sources, feed_stats, limits, render_cache,
                             cast(Any, websocket)._get_current_object(), send_slots)
        finally:
            clients.release()
        return None

    return app
