"""Binance's ``GET /api/v3/ticker/24hr``: rolling 24-hour statistics computed from published trades.

The simulator has no order book, so the FULL shape reports the last price as bid and ask with zero
quantities. Its clock is the newest published trade (as for klines), so replayed recordings with old
timestamps still have a "last 24 hours". A symbol without a trade in the window reports ``firstId``/``lastId``
-1 and ``count`` 0, as Binance does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

import orjson

from app.model import Tick

DAY_MS = 86_400_000
_ZERO = Decimal(0)
_HUNDRED = Decimal(100)
_PERCENT_PLACES = Decimal("0.001")

# Weight by how many symbols a request names (Binance's table); no symbol parameter means all symbols.
SINGLE_SYMBOL_WEIGHT = 2
ALL_SYMBOLS_WEIGHT = 80


class TickerParamError(Exception):
    """Parameters Binance refuses with HTTP 400 and ``{"code", "msg"}``."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def ticker_weight(args: Mapping[str, str]) -> int:
    """The request weight Binance charges, from the raw parameters (charged even when they are refused)."""
    if "symbol" in args:
        return SINGLE_SYMBOL_WEIGHT
    if "symbols" not in args:
        return ALL_SYMBOLS_WEIGHT
    try:
        count = len(_symbols_list(args["symbols"]))
    except TickerParamError:
        return SINGLE_SYMBOL_WEIGHT
    return weight_for_symbols(count)


def weight_for_symbols(count: int) -> int:
    if count <= 20:
        return 2
    if count <= 100:
        return 40
    return 80


def parse_ticker_request(args: Mapping[str, str], known: Mapping[str, object]) -> tuple[list[str] | None, bool, bool]:
    """``(symbols or None for all, full, single)`` from the parameters, or a ``TickerParamError``."""
    kind = args.get("type", "FULL")
    if kind not in ("FULL", "MINI"):
        raise TickerParamError(-1100, "Illegal characters found in parameter 'type'; legal range is 'FULL, MINI'.")
    full = kind == "FULL"
    if "symbol" in args and "symbols" in args:
        raise TickerParamError(-1128, "Combination of optional parameters invalid.")
    if "symbol" in args:
        symbol = args["symbol"]
        if not symbol:
            raise TickerParamError(-1102, "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed.")
        if symbol not in known:
            raise TickerParamError(-1121, "Invalid symbol.")
        return [symbol], full, True
    if "symbols" not in args:
        return None, full, False
    symbols = _symbols_list(args["symbols"])
    if not symbols:
        raise TickerParamError(-1102, "Mandatory parameter 'symbols' was not sent, was empty/null, or malformed.")
    if len(set(symbols)) != len(symbols):
        raise TickerParamError(-1101, "Duplicate values for parameter 'symbols'.")
    if any(symbol not in known for symbol in symbols):
        raise TickerParamError(-1121, "Invalid symbol.")
    return symbols, full, False


def _symbols_list(text: str) -> list[str]:
    try:
        parsed = orjson.loads(text)
    except orjson.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, list) or not all(isinstance(item, str) and item for item in parsed):
        raise TickerParamError(
            -1100, "Illegal characters found in parameter 'symbols'; legal range is a JSON array of symbol names."
        )
    return parsed


def ticker_row(
    symbol: str, window: Sequence[Tick], now_ms: int, previous_close: Decimal | None, *, full: bool
) -> dict[str, Any]:
    """One symbol's statistics over ``window`` (its trades with ``now_ms - 24 h < time <= now_ms``, ascending)."""
    if window:
        first, last = window[0], window[-1]
        open_price, last_price = first.price, last.price
        high = max(tick.price for tick in window)
        low = min(tick.price for tick in window)
        volume = sum((tick.quantity for tick in window), _ZERO)
        quote_volume = sum((tick.price * tick.quantity for tick in window), _ZERO)
        first_id, last_id, last_qty = first.trade_id, last.trade_id, last.quantity
    else:
        open_price = last_price = high = low = volume = quote_volume = last_qty = _ZERO
        first_id = last_id = -1
    row: dict[str, Any] = {"symbol": symbol}
    if full:
        change = last_price - open_price
        percent = (change / open_price * _HUNDRED).quantize(_PERCENT_PLACES) if open_price else _ZERO
        average = quote_volume / volume if volume else _ZERO
        row.update({
            "priceChange": _text(change),
            "priceChangePercent": f"{percent:.3f}",
            "weightedAvgPrice": _text(average),
            "prevClosePrice": _text(previous_close if previous_close is not None else _ZERO),
            "lastPrice": _text(last_price),
            "lastQty": _text(last_qty),
            "bidPrice": _text(last_price),
            "bidQty": _text(_ZERO),
            "askPrice": _text(last_price),
            "askQty": _text(_ZERO),
        })
    row.update({
        "openPrice": _text(open_price),
        "highPrice": _text(high),
        "lowPrice": _text(low),
    })
    if not full:
        row["lastPrice"] = _text(last_price)
    row.update({
        "volume": _text(volume),
        "quoteVolume": _text(quote_volume),
        "openTime": now_ms - DAY_MS,
        "closeTime": now_ms,
        "firstId": first_id,
        "lastId": last_id,
        "count": len(window),
    })
    return row


def _text(value: Decimal) -> str:
    return f"{value:.8f}"
