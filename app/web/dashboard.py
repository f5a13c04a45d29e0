"""The browser dashboard: the page at ``/`` (static files shipped in ``app/web/static/``) and ``/api/config``.

The page is plain JavaScript modules and CSS with the vendored lightweight-charts file: nothing is built at
install time and nothing is fetched from another host at run time. ``/api/config`` tells it what the settings
decide (intervals, when a symbol is stale, the exchange in use); everything else it reads from the public API.
"""

from __future__ import annotations

from pathlib import Path

from quart import Quart, Response, send_from_directory

from app.settings import Settings
from app.web.routes import json_response

STATIC_DIR = Path(__file__).parent / "static"
STATIC_URL_PATH = "/static"
INDEX_FILE = "index.html"


def dashboard_config(settings: Settings) -> dict[str, object]:
    return {
        "candle_intervals": [interval.name for interval in settings.candle_intervals],
        "stale_after_seconds": settings.stale_after_seconds,
        "exchange_ws_url": settings.binance_ws_url,
        "exchange_rest_url": settings.binance_rest_url,
    }


def register_dashboard(app: Quart, settings: Settings) -> None:
    config = dashboard_config(settings)

    @app.get("/")
    async def dashboard() -> Response:
        response = await send_from_directory(STATIC_DIR, INDEX_FILE)
        # The page names its scripts without a version: revalidate so an upgrade is never half-cached.
        response.headers["Cache-Control"] = "no-cache"
        return response

    @app.get("/api/config")
    async def dashboard_settings() -> Response:
        return json_response(config)
