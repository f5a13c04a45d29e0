"""The Quart (quart-trio) application: routes read the service's state, never mutate the data flow."""

from __future__ import annotations

from typing import Any, cast

from quart import websocket
from quart_trio import QuartTrio

from app.state import ServiceState
from app.web.dashboard import STATIC_DIR, STATIC_URL_PATH, register_dashboard
from app.web.errors import FEED_PATH, register_error_handlers
from app.web.feed import FeedLimits, FeedStats, RenderCache, serve_feed
from app.web.metrics import metrics_registry
from app.web.routes import register_routes

# Request bodies are one small JSON object; anything larger is refused with 413.
MAX_BODY_BYTES = 64 * 1024


def create_app(state: ServiceState, feed_limits: FeedLimits | None = None) -> QuartTrio:
    app = QuartTrio("marketdata", static_folder=str(STATIC_DIR), static_url_path=STATIC_URL_PATH)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    feed_stats = FeedStats()
    render_cache = RenderCache()
    limits = feed_limits or FeedLimits()
    register_error_handlers(app)
    register_routes(app, state, metrics_registry(state, feed_stats))
    register_dashboard(app, state.settings)

    @app.websocket(FEED_PATH)
    async def feed() -> None:
        # The object itself, not the context-local proxy: the feed's tasks use it directly.
        await serve_feed(state, feed_stats, limits, render_cache, cast(Any, websocket)._get_current_object())

    return app
