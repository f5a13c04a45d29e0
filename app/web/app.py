"""The Quart (quart-trio) application: routes read the service's state, never mutate the data flow."""

from __future__ import annotations

from typing import Any

import orjson
from quart import Response
from quart_trio import QuartTrio

from app.convert import api_converter
from app.state import ServiceState


def json_response(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(api_converter.unstructure(body)), status=status,
                    content_type="application/json")


def error_response(status: int, code: str, message: str) -> Response:
    return json_response({"error": {"code": code, "message": message}}, status)


def create_app(state: ServiceState) -> QuartTrio:
    app = QuartTrio("marketdata")

    @app.get("/api/ticks")
    async def all_ticks() -> Response:
        return json_response(state.hub.latest())

    @app.get("/api/ticks/<symbol>")
    async def one_tick(symbol: str) -> Response:
        symbol = symbol.upper()
        if symbol not in state.settings.symbols:
            return error_response(404, "unknown_symbol", f"{symbol} is not subscribed")
        tick = state.hub.latest_for(symbol)
        if tick is None:
            return error_response(404, "no_data", f"no trade received for {symbol} yet")
        return json_response(tick)

    @app.get("/health")
    async def health() -> Response:
        return json_response({"status": "ok", "ticks_published": state.hub.ticks_published})

    return app
