"""The OpenAPI 3.1 document served at ``/openapi.json`` (tested against the app's routes and real responses)."""

from __future__ import annotations

from typing import Any

from app.convert import api_fields
from app.model import Candle, Gap, Tick
from app.settings import Settings
from app.web.params import DEFAULT_CANDLE_LIMIT, MAX_CANDLE_LIMIT

OPENAPI_VERSION = "3.1.0"

_DECIMAL = {"type": "number", "description": "exact decimal (as many digits as the exchange sent)"}
_TIME = {"type": "string", "format": "date-time", "description": "ISO-8601, UTC, millisecond precision"}
_TRADE_ID = {"type": "integer"}

_TICK_FIELDS: dict[str, dict[str, Any]] = {
    "symbol": {"type": "string"},
    "price": _DECIMAL,
    "quantity": _DECIMAL,
    "timestamp": {**_TIME, "description": "trade time (ISO-8601, UTC)"},
    "event_time": {**_TIME, "description": "exchange event time (ISO-8601, UTC)"},
    "trade_id": _TRADE_ID,
    "is_buyer_maker": {"type": "boolean"},
}
_CANDLE_FIELDS: dict[str, dict[str, Any]] = {
    "symbol": {"type": "string"},
    "interval": {"type": "string"},
    "open_time": _TIME,
    "close_time": {**_TIME, "description": "last millisecond of the interval"},
    "open": _DECIMAL,
    "high": _DECIMAL,
    "low": _DECIMAL,
    "close": _DECIMAL,
    "volume": _DECIMAL,
    "quote_volume": _DECIMAL,
    "trade_count": {"type": "integer"},
    "taker_buy_volume": _DECIMAL,
    "taker_buy_quote_volume": _DECIMAL,
    "first_trade_id": {"type": "integer", "description": "-1 when the interval had no trade"},
    "last_trade_id": {"type": "integer", "description": "-1 when the interval had no trade"},
    "closed": {"type": "boolean", "description": "false for the candle of the running interval"},
    "revision": {"type": "integer", "description": "0, or 1, 2, ... when a late trade corrected the candle"},
    "complete": {"type": "boolean", "description": "false when trades of the interval from before the service saw "
                 "it could not be fetched (start-up, symbol added, resume): the candle holds only the trades seen"},
}
_GAP_FIELDS: dict[str, dict[str, Any]] = {
    "symbol": {"type": "string"},
    "first_trade_id": _TRADE_ID,
    "last_trade_id": _TRADE_ID,
    "reason": {"type": "string"},
    "detected_at": _TIME,
}


def _object(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties) if required is None else required,
        "additionalProperties": False,
    }


def _model_schema(cls: type, fields: dict[str, dict[str, Any]]) -> dict[str, Any]:
    # The schema must list exactly the fields the converter emits.
    assert tuple(fields) == api_fields(cls), (cls, api_fields(cls))
    return _object(fields)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


def _symbol_parameter(description: str) -> dict[str, Any]:
    return {"name": "symbol", "in": "path", "required": True, "description": description,
            "schema": {"type": "string", "pattern": "^[A-Za-z0-9]{2,20}$"}}


_TIME_PARAMETER_SCHEMA = {
    "oneOf": [
        {"type": "integer", "minimum": 0, "description": "epoch milliseconds"},
        {"type": "string", "format": "date-time", "description": "ISO-8601 with a zone, e.g. 2024-08-08T23:55:00Z"},
    ]
}


# The requests that change the service (see app/web/admin.py).
_ADMIN_SECURITY: list[dict[str, list[str]]] = [{"adminToken": []}]
_ADMIN_ERRORS = {
    "401": _error("missing_token: ADMIN_TOKEN is set and no Authorization: Bearer header was sent"),
    "403": _error("invalid_token: not the ADMIN_TOKEN; admin_disabled: no ADMIN_TOKEN and the API listens beyond "
                  "loopback"),
}


_QUERY_ERRORS = "unknown_parameter (a query parameter the operation does not take), repeated_parameter"


def _add_query_errors(paths: dict[str, Any]) -> None:
    """Every operation refuses query parameters it does not declare, and repeated ones (app/web/query.py)."""
    for item in paths.values():
        for operation in item.values():
            responses = operation["responses"]
            given = responses.get("400")
            responses["400"] = _error(_QUERY_ERRORS if given is None else f"{given['description']}, {_QUERY_ERRORS}")


def openapi_document(settings: Settings) -> dict[str, Any]:
    intervals = [interval.name for interval in settings.candle_intervals]
    default_interval = "1m" if "1m" in intervals else intervals[0]
    schemas: dict[str, Any] = {
        "Tick": _model_schema(Tick, _TICK_FIELDS),
        "Candle": _model_schema(Candle, _CANDLE_FIELDS),
        "Gap": _model_schema(Gap, _GAP_FIELDS),
        "Error": _object({"error": _object({
            "code": {"type": "string", "description": "stable, machine-readable, e.g. unknown_symbol"},
            "message": {"type": "string"},
        })}),
        "SymbolState": _object({
            "symbol": {"type": "string"},
            "last_trade_id": {"type": ["integer", "null"]},
            "last_trade_time": {"type": ["string", "null"], "format": "date-time"},
            "last_tick_age_seconds": {"type": ["number", "null"]},
            "ticks_received": {"type": "integer"},
            "gaps_found": {"type": "integer"},
            "gaps_repaired": {"type": "integer"},
            "unrepaired_gaps": {"type": "array", "items": _ref("Gap")},
            "backfilling": {"type": "boolean"},
            "trading_status": {"type": "string",
                               "description": "Binance's status (TRADING, BREAK ...), or DELISTED"},
        }),
        "Subscription": _object({"symbol": {"type": "string"}, "subscribed": {"type": "boolean"}}),
        "Health": _object({
            "status": {"type": "string", "enum": ["ok", "unavailable"]},
            "reasons": {"type": "array", "items": _object({
                "code": {"type": "string",
                         "enum": ["disconnected", "stalled", "backfilling", "unrepaired_gap", "writer_behind",
                                  "storage_failed"]},
                "message": {"type": "string"},
            })},
            "connections": {"type": "array", "items": _object({
                "name": {"type": "string"},
                "connected": {"type": "boolean"},
                "streams": {"type": "integer"},
                "last_frame_age_seconds": {"type": ["number", "null"]},
                "reconnects": {"type": "integer"},
            })},
            "ticks_published": {"type": "integer"},
            "stopped_symbols": {"type": "array", "items": _object({
                "symbol": {"type": "string"},
                "trading_status": {"type": "string"},
            })},
            "unrepaired_gaps": {"type": "array", "items": _ref("Gap")},
            "storage": _object({
                "failing": {"type": "boolean"},
                "last_error": {"type": ["string", "null"]},
                "ticks_waiting": {"type": "integer"},
                "candles_waiting": {"type": "integer"},
                "ticks_unwritten": {"type": "integer"},
                "candles_unwritten": {"type": "integer"},
                "unwritten_trade_ids": {"type": "object", "additionalProperties": {
                    "type": "array", "items": _object({"first_trade_id": {"type": "integer"},
                                                       "last_trade_id": {"type": "integer"}})}},
            }),
        }),
    }
    symbol_errors = {
        "400": _error("not a symbol (invalid_symbol)"),
        "404": _error("the symbol is not subscribed (unknown_symbol) or has no trade yet (no_data)"),
    }
    paths: dict[str, Any] = {
        "/api/ticks": {"get": {
            "operationId": "latestTicks",
            "summary": "The latest trade of every subscribed symbol",
            "responses": {"200": _json({"type": "object", "additionalProperties": _ref("Tick")},
                                       "symbol -> latest tick")},
        }},
        "/api/ticks/{symbol}": {"get": {
            "operationId": "latestTick",
            "summary": "The latest trade of one symbol",
            "parameters": [_symbol_parameter("e.g. BTCUSDT (case-insensitive)")],
            "responses": {"200": _json(_ref("Tick"), "the latest tick"), **symbol_errors},
        }},
        "/api/candles/{symbol}": {"get": {
            "operationId": "candles",
            "summary": "Candles oldest first: closed ones, then the open one (closed: false)",
            "description": "As Binance's klines: start <= open_time <= end; with start, the first `limit` candles "
                           "from it, otherwise the last `limit`.",
            "parameters": [
                _symbol_parameter("e.g. BTCUSDT (case-insensitive)"),
                {"name": "interval", "in": "query", "required": False,
                 "schema": {"type": "string", "enum": intervals, "default": default_interval}},
                {"name": "limit", "in": "query", "required": False,
                 "schema": {"type": "integer", "minimum": 1, "maximum": MAX_CANDLE_LIMIT,
                            "default": DEFAULT_CANDLE_LIMIT}},
                {"name": "start", "in": "query", "required": False, "schema": _TIME_PARAMETER_SCHEMA,
                 "description": "earliest open time (epoch ms or ISO-8601)"},
                {"name": "end", "in": "query", "required": False, "schema": _TIME_PARAMETER_SCHEMA,
                 "description": "latest open time (epoch ms or ISO-8601)"},
            ],
            "responses": {
                "200": _json({"type": "array", "items": _ref("Candle")}, "candles, oldest first"),
                "400": _error("invalid_symbol, unknown_interval, invalid_limit, invalid_time, invalid_range"),
                "404": _error("unknown_symbol: not subscribed and nothing stored"),
                "503": _error("storage_unavailable: the candles asked for are older than memory holds and the "
                              "database cannot be read now"),
            },
        }},
        "/api/symbols": {
            "get": {
                "operationId": "symbols",
                "summary": "Subscribed symbols with their ingest state",
                "responses": {"200": _json(
                    _object({"symbols": {"type": "array", "items": _ref("SymbolState")}}), "the symbols")},
            },
            "post": {
                "operationId": "subscribe",
                "summary": "Subscribe a symbol live (no reconnect)",
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": _object({"symbol": {"type": "string", "pattern": "^[A-Za-z0-9]{2,20}$"}}),
                }}},
                "security": _ADMIN_SECURITY,
                "responses": {
                    "201": _json(_ref("Subscription"), "subscribed"),
                    "400": _error("invalid_json: the body is not JSON"),
                    **_ADMIN_ERRORS,
                    "409": _error("already_subscribed"),
                    "413": _error("payload_too_large: the body is over 64 KiB (the connection is closed after it)"),
                    "422": _error("invalid_body, invalid_symbol, or unknown_symbol (not listed on the exchange)"),
                    "502": _error("exchange_refused: the exchange refused the subscription"),
                    "503": _error("exchange_unavailable: the exchange could not be asked"),
                },
            },
        },
        "/api/symbols/{symbol}": {"delete": {
            "operationId": "unsubscribe",
            "summary": "Unsubscribe a symbol live",
            "parameters": [_symbol_parameter("a subscribed symbol")],
            "security": _ADMIN_SECURITY,
            "responses": {
                "200": _json(_ref("Subscription"), "unsubscribed"),
                "400": _error("invalid_symbol"),
                **_ADMIN_ERRORS,
                "404": _error("not_subscribed"),
                "502": _error("exchange_refused"),
                "503": _error("exchange_unavailable"),
            },
        }},
        "/health": {"get": {
            "operationId": "health",
            "summary": "200 when every connection is up and data is fresh, else 503 with the reasons",
            "responses": {"200": _json(_ref("Health"), "healthy"), "503": _json(_ref("Health"), "unhealthy")},
        }},
        "/metrics": {"get": {
            "operationId": "metrics",
            "summary": "Prometheus metrics (text exposition format)",
            "responses": {"200": {"description": "metrics",
                                  "content": {"text/plain": {"schema": {"type": "string"}}}}},
        }},
        "/": {"get": {
            "operationId": "dashboard",
            "summary": "The live dashboard (an HTML page; its files are under /static/)",
            "description": "The view lives in the URL: the page reads symbol and interval itself and shows the "
                           "first symbol and interval instead of ones it does not serve.",
            "parameters": [
                {"name": "symbol", "in": "query", "required": False, "schema": {"type": "string"},
                 "description": "the symbol shown, e.g. ETHUSDT"},
                {"name": "interval", "in": "query", "required": False, "schema": {"type": "string"},
                 "description": "the candle interval shown, e.g. 5m"},
            ],
            "responses": {"200": {"description": "the page", "content": {"text/html": {"schema": {"type": "string"}}}}},
        }},
        "/api/config": {"get": {
            "operationId": "config",
            "summary": "Settings a client needs: candle intervals, when a symbol is stale, the exchange in use",
            "responses": {"200": _json(_object({
                "candle_intervals": {"type": "array", "items": {"type": "string"}},
                "stale_after_seconds": {"type": "number", "description": "STALE_AFTER_SECONDS"},
                "exchange_ws_url": {"type": "string", "description": "BINANCE_WS_URL"},
                "exchange_rest_url": {"type": "string", "description": "BINANCE_REST_URL"},
            }), "the settings")},
        }},
        "/openapi.json": {"get": {
            "operationId": "openapi",
            "summary": "This document",
            "responses": {"200": _json({"type": "object"}, "the OpenAPI document")},
        }},
    }
    _add_query_errors(paths)
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "marketdata",
            "version": "0.1.0",
            "description": "Binance trades as exact ticks and candles. Every error has the shape "
                           '{"error": {"code": "...", "message": "..."}}. Live data: the WebSocket feed at /ws '
                           '(send {"op": "subscribe", "channel": "ticks", "symbols": ["BTCUSDT"]}).',
        },
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": {"adminToken": {
            "type": "http",
            "scheme": "bearer",
            "description": "The service's ADMIN_TOKEN, needed by the requests that change subscriptions when it is "
                           "set. Without one they are open while the API listens on loopback, and refused (403 "
                           "admin_disabled) when it listens beyond it. Reads never need it.",
        }}},
    }
