"""The REST side for backfill: Binance spot's ``/api/v3`` trade, aggregate-trade, kline, 24hr-ticker and
exchange-info endpoints.

Responses and errors in Binance's shapes (unknown paths and methods too); a request-weight budget per minute
with ``X-MBX-USED-WEIGHT-1M`` headers and HTTP 429 + ``Retry-After`` beyond it. Only published trades are visible.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import orjson
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from app.clock import wall_clock_ms
from app.intervals import Interval, UnknownIntervalError
from app.model import Tick
from app.replay.agg_trades import AggTrade
from app.replay.events import wire_decimal
from app.replay.faults import RestFault
from app.replay.hub import Hub
from app.replay.klines import build_klines
from app.replay.ticker import DAY_MS, TickerParamError, parse_ticker_request, ticker_row, ticker_weight

log = logging.getLogger(__name__)

WEIGHTS = {"historicalTrades": 25, "trades": 25, "aggTrades": 4, "klines": 2, "exchangeInfo": 20, "time": 1, "ping": 1}
DEFAULT_LIMIT = 500
MAX_LIMIT = 1000
HOUR_MS = 3_600_000


class RestError(Exception):
    """A request Binance refuses with HTTP 400 and ``{"code", "msg"}``."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class WeightBudget:
    """Binance's per-minute request weight: fixed one-minute windows, as Binance resets them each minute."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self.used = 0
        self._window = -1

    def charge(self, weight: int, now: float) -> int | None:
        """Adds ``weight`` and returns None, or returns the seconds to wait when it does not fit."""
        window = int(now // 60)
        if window != self._window:
            self._window, self.used = window, 0
        if self.used + weight > self.per_minute:
            return max(1, math.ceil((window + 1) * 60 - now))
        self.used += weight
        return None


def create_rest_app(hub: Hub) -> QuartTrio:
    app = QuartTrio("marketdata-simulator")
    budget = WeightBudget(hub.limits.rest_weight_per_minute)

    def endpoint(
        name: str, handler: Callable[[Mapping[str, str]], object],
        weight: Callable[[Mapping[str, str]], int] | None = None,
    ) -> None:
        async def view() -> Response:
            hub.counters.rest_requests += 1
            cost = WEIGHTS[name] if weight is None else weight(request.args)
            retry_after = budget.charge(cost, trio.current_time())
            headers = {"X-MBX-USED-WEIGHT-1M": str(budget.used), "X-MBX-USED-WEIGHT": str(budget.used)}
            if retry_after is not None:
                hub.counters.rest_rejected += 1
                message = (f"Too much request weight used; current limit is {budget.per_minute} request weight "
                           "per 1 MINUTE. Please use WebSocket Streams for live updates to avoid polling the API.")
                return _json({"code": -1003, "msg": message}, 429, {**headers, "Retry-After": str(retry_after)})
            hub.counters.rest_weight_used += cost
            fault = hub.rest_faults.take(name)
            if fault is not None:
                hub.counters.rest_faults += 1
                hub.changed()  # tests wait for the fault to have been served
                return await _faulty_answer(fault, headers)
            try:
                body = handler(request.args)
            except (RestError, TickerParamError) as error:
                return _json({"code": error.code, "msg": error.message}, 400, headers)
            return _json(body, 200, headers)

        app.add_url_rule(f"/api/v3/{name}", f"api_{name.replace('/', '_')}", view, methods=["GET"])

    endpoint("historicalTrades", lambda args: _historical_trades(hub, args))
    endpoint("trades", lambda args: _recent_trades(hub, args))
    endpoint("aggTrades", lambda args: _agg_trades(hub, args))
    endpoint("klines", lambda args: _klines(hub, args))
    endpoint("exchangeInfo", lambda args: _exchange_info(hub, args))
    endpoint("ticker/24hr", lambda args: _ticker_24hr(hub, args), ticker_weight)
    endpoint("time", lambda args: {"serverTime": wall_clock_ms()})
    endpoint("ping", lambda args: {})

    async def unknown(error: HTTPException) -> Response:
        # Binance's JSON error shape, so a client's error handling sees what it would see from Binance.
        status = error.code or 404
        message = f"This operation is not supported: {request.method} {request.path}"
        return _json({"code": -1020, "msg": message}, status, {})

    app.register_error_handler(404, unknown)
    app.register_error_handler(405, unknown)
    return app


async def _faulty_answer(fault: RestFault, headers: Mapping[str, str]) -> Response:
    if fault is RestFault.TIMEOUT:
        await trio.sleep_forever()  # the client's timeout ends it (Hypercorn cancels us when it disconnects)
    if fault is RestFault.SERVER_ERROR:
        return _json({"code": -1001, "msg": "Internal error; unable to process your request. Please try again."},
                     503, headers)
    if fault is RestFault.TRUNCATED_JSON:
        body = orjson.dumps([{"id": 1, "price": "100.00000000", "qty": "1.00000000"}])
        return Response(body[: len(body) // 2], status=200, headers=dict(headers), content_type="application/json")
    if fault is RestFault.INVALID_JSON:
        return Response(b"<html><body>502 Bad Gateway</body></html>", status=200, headers=dict(headers),
                        content_type="application/json")
    return _json([], 200, headers)


def _json(body: object, status: int, headers: Mapping[str, str]) -> Response:
    return Response(orjson.dumps(body), status=status, headers=dict(headers), content_type="application/json")


async def serve_rest(
    hub: Hub, host: str, port: int, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serves the REST app with Hypercorn; reports the bound port once listening."""
    config = HypercornConfig()
    config.bind = [f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = log
    config.graceful_timeout = 0.5

    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(partial(serve, create_rest_app(hub), config))
        # Hypercorn reports "http://127.0.0.1:PORT".
        task_status.started(int(binds[0].rsplit(":", 1)[-1]))


# --- endpoints ---------------------------------------------------------------------------------------------


def _trade_row(tick: Tick, exact: bool) -> dict[str, Any]:
    return {
        "id": tick.trade_id,
        "price": wire_decimal(tick.price, exact=exact),
        "qty": wire_decimal(tick.quantity, exact=exact),
        "quoteQty": f"{tick.price * tick.quantity:.8f}",
        "time": tick.trade_time_ms,
        "isBuyerMaker": tick.is_buyer_maker,
        "isBestMatch": True,
    }


def _symbol(hub: Hub, args: Mapping[str, str]) -> str:
    symbol = args.get("symbol", "")
    if not symbol:
        raise RestError(-1102, "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed.")
    if symbol not in hub.symbols:
        raise RestError(-1121, "Invalid symbol.")
    return symbol


def _int_param(args: Mapping[str, str], name: str) -> int | None:
    text = args.get(name)
    if text is None or text == "":
        return None
    if not text.isdigit() or len(text) > 20:
        raise RestError(-1100, f"Illegal characters found in parameter '{name}'; legal range is '^[0-9]{{1,20}}$'.")
    return int(text)


def _limit(args: Mapping[str, str]) -> int:
    limit = _int_param(args, "limit")
    if limit is None:
        return DEFAULT_LIMIT
    if limit < 1:
        raise RestError(-1100, "Illegal characters found in parameter 'limit'; legal range is '1-1000'.")
    return min(limit, MAX_LIMIT)  # Binance serves at most 1000 rows and does not refuse a larger limit


def _historical_trades(hub: Hub, args: Mapping[str, str]) -> list[dict[str, Any]]:
    symbol, limit = _symbol(hub, args), _limit(args)
    from_id = _int_param(args, "fromId")
    trades = hub.ledger.symbol(symbol)
    ticks = trades.recent(limit) if from_id is None else trades.from_id(from_id, limit)
    return [_trade_row(tick, hub.exact_decimals) for tick in ticks]


def _agg_trades(hub: Hub, args: Mapping[str, str]) -> list[dict[str, Any]]:
    """Binance's rules: ``fromId`` alone, or a time window of at most an hour (``startTime`` alone means the
    hour from it, ``endTime`` alone the hour up to it), or neither: the most recent aggregates."""
    symbol, limit = _symbol(hub, args), _limit(args)
    from_id = _int_param(args, "fromId")
    start_ms, end_ms = _int_param(args, "startTime"), _int_param(args, "endTime")
    trades = hub.ledger.symbol(symbol)
    if from_id is not None:
        if start_ms is not None or end_ms is not None:
            raise RestError(-1128, "Combination of optional parameters invalid.")
        aggregates = trades.agg_from_id(from_id, limit)
    elif start_ms is None and end_ms is None:
        aggregates = trades.agg_recent(limit)
    else:
        if start_ms is None:
            assert end_ms is not None
            start_ms = max(0, end_ms - HOUR_MS)
        elif end_ms is None:
            end_ms = start_ms + HOUR_MS
        if start_ms > end_ms:
            raise RestError(-1023, "Start time is greater than end time.")
        if end_ms - start_ms > HOUR_MS:
            raise RestError(-1127, "More than 1 hours between startTime and endTime.")
        aggregates = trades.agg_between(start_ms, end_ms, limit)
    return [_agg_trade_row(aggregate) for aggregate in aggregates]


def _agg_trade_row(aggregate: AggTrade) -> dict[str, Any]:
    # ``M`` (best price match) is always true here, as in the trade rows.
    return {
        "a": aggregate.agg_id,
        "p": f"{aggregate.price:.8f}",
        "q": f"{aggregate.quantity:.8f}",
        "f": aggregate.first_trade_id,
        "l": aggregate.last_trade_id,
        "T": aggregate.time_ms,
        "m": aggregate.is_buyer_maker,
        "M": True,
    }


def _recent_trades(hub: Hub, args: Mapping[str, str]) -> list[dict[str, Any]]:
    symbol, limit = _symbol(hub, args), _limit(args)
    return [_trade_row(tick, hub.exact_decimals) for tick in hub.ledger.symbol(symbol).recent(limit)]


def _klines(hub: Hub, args: Mapping[str, str]) -> list[list[int | str]]:
    symbol = _symbol(hub, args)
    name = args.get("interval", "")
    if not name:
        raise RestError(-1102, "Mandatory parameter 'interval' was not sent, was empty/null, or malformed.")
    try:
        interval = Interval(name)
    except UnknownIntervalError:
        raise RestError(-1120, "Invalid interval.") from None
    limit = _limit(args)
    start_ms, end_ms = _int_param(args, "startTime"), _int_param(args, "endTime")
    if start_ms is not None and end_ms is not None and start_ms > end_ms:
        raise RestError(-1023, "Start time is greater than end time.")
    trades = hub.ledger.symbol(symbol)
    newest = trades.last_time_ms
    if newest is None:
        return []
    # The exchange's "now" is its latest trade: klines after it do not exist yet.
    now_open = interval.open_time(newest)
    last_open = now_open if end_ms is None else min(now_open, interval.open_time(end_ms))
    if start_ms is not None:
        # Binance returns klines whose open time is at or after startTime.
        first_open = interval.open_time(start_ms)
        if first_open < start_ms:
            first_open = interval.next_open_time(first_open)
    else:
        # Far enough back for ``limit`` intervals (1M counts 30 days nominally, so give it slack).
        first_open = interval.open_time(max(0, last_open - int(limit * interval.nominal_ms * 1.1)))
    if first_open > last_open:
        return []
    before = trades.last_before(first_open)
    rows = build_klines(
        trades.between(first_open, interval.close_time(last_open)),
        interval,
        first_open=first_open,
        last_open=last_open,
        previous_close=None if before is None else before.price,
        max_rows=limit if start_ms is not None else None,
    )
    return rows if start_ms is not None else rows[-limit:]


def _ticker_24hr(hub: Hub, args: Mapping[str, str]) -> object:
    symbols, full, single = parse_ticker_request(args, hub.symbols)
    newest = hub.ledger.newest_time_ms()
    now_ms = newest if newest is not None else wall_clock_ms()
    rows = []
    for symbol in symbols if symbols is not None else list(hub.symbols):
        trades = hub.ledger.symbol(symbol)
        window = trades.between(now_ms - DAY_MS + 1, now_ms)
        before = trades.last_before(now_ms - DAY_MS + 1)
        rows.append(ticker_row(symbol, window, now_ms, None if before is None else before.price, full=full))
    return rows[0] if single else rows


def _exchange_info(hub: Hub, args: Mapping[str, str]) -> dict[str, Any]:
    wanted: list[str] | None = None
    if args.get("symbol"):
        wanted = [args["symbol"]]
    elif args.get("symbols"):
        try:
            parsed = orjson.loads(args["symbols"])
        except orjson.JSONDecodeError:
            raise RestError(-1100, "Illegal characters found in parameter 'symbols'.") from None
        if not isinstance(parsed, list) or not all(isinstance(item, str) for item in parsed):
            raise RestError(-1100, "Illegal characters found in parameter 'symbols'.")
        wanted = parsed
    if wanted is not None and any(symbol not in hub.symbols for symbol in wanted):
        raise RestError(-1121, "Invalid symbol.")
    infos = [hub.symbols[symbol] for symbol in wanted] if wanted is not None else list(hub.symbols.values())
    return {
        "timezone": "UTC",
        "serverTime": wall_clock_ms(),
        "rateLimits": [
            {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1,
             "limit": hub.limits.rest_weight_per_minute},
            {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 100},
            {"rateLimitType": "ORDERS", "interval": "DAY", "intervalNum": 1, "limit": 200000},
            {"rateLimitType": "RAW_REQUESTS", "interval": "MINUTE", "intervalNum": 5, "limit": 61000},
        ],
        "exchangeFilters": [],
        "symbols": [
            {
                "symbol": info.symbol,
                "status": hub.trading_status.get(info.symbol, "TRADING"),
                "baseAsset": info.base_asset,
                "baseAssetPrecision": 8,
                "quoteAsset": info.quote_asset,
                "quotePrecision": 8,
                "quoteAssetPrecision": 8,
                "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LOSS_LIMIT", "TAKE_PROFIT_LIMIT"],
                "isSpotTradingAllowed": True,
                "filters": [
                    {"filterType": "PRICE_FILTER", "minPrice": info.tick_size, "maxPrice": "1000000.00000000",
                     "tickSize": info.tick_size},
                    {"filterType": "LOT_SIZE", "minQty": info.step_size, "maxQty": "9000.00000000",
                     "stepSize": info.step_size},
                ],
                "permissions": [],
                "permissionSets": [["SPOT"]],
            }
            for info in infos
        ],
    }
