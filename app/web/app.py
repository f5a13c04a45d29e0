"""The Quart (quart-trio) application: routes read the service's state, never mutate the data flow."""

from __future__ import annotations

from typing import Any, cast

from quart import Response, websocket
from quart_trio import QuartTrio

from app.state import ServiceState
from app.web.admin import AdminAccess
from app.web.client_limit import ClientLimit
from app.web.dashboard import STATIC_DIR, STATIC_URL_PATH, register_dashboard
from app.web.errors import FEED_PATH, error_response, register_error_handlers
from app.web.feed import FeedLimits, FeedStats, RenderCache, serve_feed
from app.web.metrics import metrics_registry
from app.web.openapi import openapi_document
from app.web.query import accepted_parameters, register_query_check
from app.web.routes import register_routes

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
    settings = state.settings
    admin = admin or AdminAccess(token=settings.admin_token, host=settings.http_host)
    admin.warn_if_disabled()
    clients = ws_clients or ClientLimit(settings.max_ws_clients)
    register_error_handlers(app)
    register_query_check(app, accepted_parameters(openapi_document(settings)))
    register_routes(app, state, metrics_registry(state, feed_stats, clients), admin)
    register_dashboard(app, state.settings)

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
            await serve_feed(state, feed_stats, limits, render_cache, cast(Any, websocket)._get_current_object())
        finally:
            clients.release()
        return None

    return app
