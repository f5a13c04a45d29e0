"""The REST routes: ticks, candles, symbols, health, metrics and the OpenAPI document."""

from __future__ import annotations

from typing import Any

import attrs
import orjson
import trio
from prometheus_client import CollectorRegistry
from quart import Quart, Response, request

from app.convert import api_converter, iso_utc
from app.intervals import Interval
from app.store.candle_query import CandleQuery
from app.store.latest import TickHub
from app.store.storage import StorageError
from app.web.admin import AdminAccess
from app.web.errors import ApiError
from app.web.health import HealthSources, assess_health
from app.web.metrics import CONTENT_TYPE, render_metrics
from app.web.params import parse_interval, parse_limit, parse_symbol, parse_symbol_body, parse_time_range
from app.web.symbols import SymbolControl


def json_response(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(api_converter.unstructure(body)), status=status, content_type="application/json")


@attrs.frozen
class ApiSources:
    """What the REST routes read and change."""

    ticks: TickHub
    candles: CandleQuery
    symbols: SymbolControl
    intervals: tuple[Interval, ...]
    health: HealthSources


def register_routes(
    app: Quart, sources: ApiSources, registry: CollectorRegistry, admin: AdminAccess,
    openapi_document: dict[str, Any],
) -> None:
    openapi_body = orjson.dumps(openapi_document)
    served_symbols = sources.symbols.served

    @app.get("/api/ticks")
    async def all_ticks() -> Response:
        latest = sources.ticks.latest()
        served = served_symbols()
        return json_response({symbol: latest[symbol] for symbol in served if symbol in latest})

    @app.get("/api/ticks/<symbol>")
    async def one_tick(symbol: str) -> Response:
        symbol = parse_symbol(symbol)
        if symbol not in served_symbols():
            raise ApiError(404, "unknown_symbol", f"{symbol} is not subscribed")
        tick = sources.ticks.latest_for(symbol)
        if tick is None:
            raise ApiError(404, "no_data", f"no trade received for {symbol} yet")
        return json_response(tick)

    @app.get("/api/candles/<symbol>")
    async def candles(symbol: str) -> Response:
        symbol = parse_symbol(symbol)
        interval = parse_interval(request.args.get("interval"), sources.intervals)
        limit = parse_limit(request.args.get("limit"))
        start_ms, end_ms = parse_time_range(request.args.get("start"), request.args.get("end"))
        try:
            result = await sources.candles(symbol, interval, start_ms=start_ms, end_ms=end_ms, limit=limit)
        except StorageError as error:
            # Older candles are in the database only: an answer without them would look complete.
            raise ApiError(503, "storage_unavailable", f"stored candles cannot be read now: {error}") from None
        if not result and symbol not in served_symbols():
            raise ApiError(404, "unknown_symbol", f"{symbol} is not subscribed and has no stored candles")
        return json_response(result)

    @app.get("/api/symbols")
    async def symbols() -> Response:
        return json_response({"symbols": [_symbol_row(sources, symbol) for symbol in sources.symbols.listed()]})

    @app.post("/api/symbols")
    async def subscribe() -> Response:
        admin.authorize(request.headers.get("Authorization"))
        body = await request.get_data()
        symbol = parse_symbol_body(body.encode() if isinstance(body, str) else body)
        await sources.symbols.add(symbol)
        return json_response({"symbol": symbol, "subscribed": True}, 201)

    @app.delete("/api/symbols/<symbol>")
    async def unsubscribe(symbol: str) -> Response:
        admin.authorize(request.headers.get("Authorization"))
        symbol = parse_symbol(symbol)
        await sources.symbols.remove(symbol)
        return json_response({"symbol": symbol, "subscribed": False})

    @app.get("/health")
    async def health() -> Response:
        report = assess_health(sources.health, trio.current_time())
        return json_response(report.body, 200 if report.ok else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(render_metrics(registry), content_type=CONTENT_TYPE)

    @app.get("/openapi.json")
    async def openapi() -> Response:
        return Response(openapi_body, content_type="application/json")


def _symbol_row(sources: ApiSources, symbol: str) -> dict[str, object]:
    status = sources.symbols.status(symbol)
    tick = sources.ticks.latest_for(symbol)
    now = trio.current_time()
    row: dict[str, object] = {
        "symbol": symbol,
        "last_trade_id": tick.trade_id if tick is not None else None,
        "last_trade_time": iso_utc(tick.trade_time_ms) if tick is not None else None,
        "last_tick_age_seconds": None,
        "ticks_received": 0,
        "gaps_found": 0,
        "gaps_repaired": 0,
        "unrepaired_gaps": [],
        "backfilling": False,
        "trading_status": "TRADING",
    }
    if status is not None:
        if status.last_trade_id is not None:
            row["last_trade_id"] = status.last_trade_id
        if status.last_tick_at is not None:
            row["last_tick_age_seconds"] = round(max(0.0, now - status.last_tick_at), 3)
        row["ticks_received"] = status.ticks_received
        row["gaps_found"] = status.gaps_found
        row["gaps_repaired"] = status.gaps_repaired
        row["unrepaired_gaps"] = api_converter.unstructure(status.unrepaired_gaps)
        row["backfilling"] = status.backfilling
        row["trading_status"] = status.trading_status
    return row
