"""Parsing and validating what clients send (path parts, query parameters, JSON bodies) into ``ApiError``s."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime

import orjson

from app.intervals import INTERVAL_NAMES, Interval
from app.model import SYMBOL_PATTERN, ms_from_utc
from app.web.errors import ApiError

DEFAULT_CANDLE_LIMIT = 500
MAX_CANDLE_LIMIT = 1000
# Epoch milliseconds accepted for start/end: 1970 .. 9999-12-31.
MAX_EPOCH_MS = 253_402_300_799_999


def parse_symbol(text: str) -> str:
    """An upper-case symbol (``btcusdt`` is accepted as ``BTCUSDT``)."""
    symbol = text.strip().upper()
    if not SYMBOL_PATTERN.match(symbol):
        raise ApiError(400, "invalid_symbol", f"{text!r} is not a symbol (2-20 letters or digits, e.g. BTCUSDT)")
    return symbol


def parse_interval(text: str | None, configured: Sequence[Interval]) -> Interval:
    """A configured candle interval; without one, ``1m`` when configured, else the shortest configured.

    ``None`` is an absent parameter; an empty one (``?interval=``) is an error, as in every parser here: the
    client asked for something, and silently serving the default would answer another question.
    """
    names = [interval.name for interval in configured]
    if text is None:
        return Interval("1m") if "1m" in names else configured[0]
    if text not in INTERVAL_NAMES:
        raise ApiError(400, "unknown_interval",
                       f"unknown interval {text!r}; configured: {', '.join(names)}")
    if text not in names:
        raise ApiError(400, "unknown_interval",
                       f"interval {text!r} is not configured on this service; configured: {', '.join(names)}")
    return Interval(text)


def parse_limit(text: str | None) -> int:
    if text is None:
        return DEFAULT_CANDLE_LIMIT
    try:
        limit = int(text)
    except ValueError:
        raise ApiError(400, "invalid_limit", f"limit must be an integer 1..{MAX_CANDLE_LIMIT}, got {text!r}") from None
    if not 1 <= limit <= MAX_CANDLE_LIMIT:
        raise ApiError(400, "invalid_limit", f"limit must be 1..{MAX_CANDLE_LIMIT}, got {limit}")
    return limit


def parse_time(name: str, text: str | None) -> int | None:
    """Epoch milliseconds from ``1723161300000`` or ISO-8601 with a zone (``2024-08-08T23:55:00Z``)."""
    if text is None:
        return None
    given, text = text, text.strip()
    if re.fullmatch(r"-?\d+", text):
        epoch_ms = int(text)
        if not 0 <= epoch_ms <= MAX_EPOCH_MS:
            raise ApiError(400, "invalid_time", f"{name} must be epoch milliseconds >= 0, got {text}")
        return epoch_ms
    # An unencoded '+' in a query string arrives as a space: "...T23:55:00 00:00" means "+00:00".
    iso = re.sub(r" (\d\d:?\d\d)$", r"+\1", text)
    try:
        moment = datetime.fromisoformat(iso.replace("z", "Z"))
    except ValueError:
        raise ApiError(400, "invalid_time",
                       f"{name} must be epoch milliseconds or ISO-8601 (e.g. 2024-08-08T23:55:00Z), got {given!r}"
                       ) from None
    if moment.tzinfo is None:
        raise ApiError(400, "invalid_time",
                       f"{name} {text!r} has no time zone; add Z for UTC (e.g. 2024-08-08T23:55:00Z)")
    epoch_ms = ms_from_utc(moment)
    if epoch_ms < 0:
        raise ApiError(400, "invalid_time", f"{name} must not be before 1970, got {text!r}")
    return epoch_ms


def parse_time_range(start_text: str | None, end_text: str | None) -> tuple[int | None, int | None]:
    start_ms = parse_time("start", start_text)
    end_ms = parse_time("end", end_text)
    if start_ms is not None and end_ms is not None and start_ms > end_ms:
        raise ApiError(400, "invalid_range", f"start ({start_ms}) is after end ({end_ms})")
    return start_ms, end_ms


def parse_symbol_body(body: bytes) -> str:
    """The symbol of a ``{"symbol": "SOLUSDT"}`` body."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise ApiError(400, "invalid_json", f"the body is not valid JSON: {error}") from None
    if not isinstance(document, dict) or set(document) != {"symbol"}:
        raise ApiError(422, "invalid_body", 'expected a JSON object {"symbol": "SOLUSDT"}')
    symbol = document["symbol"]
    if not isinstance(symbol, str):
        raise ApiError(422, "invalid_body", f"symbol must be a string, got {type(symbol).__name__}")
    try:
        return parse_symbol(symbol)
    except ApiError as error:
        raise ApiError(422, error.code, error.message) from None
