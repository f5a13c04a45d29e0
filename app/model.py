"""The data model: what travels over the channels and what the API serves.

Times are kept as integer milliseconds since the Unix epoch (UTC), the unit Binance uses, so that candle
alignment is integer arithmetic; the ``*_time`` properties give UTC-aware datetimes for the edges.
Prices and quantities are exact ``Decimal``s parsed from Binance's strings, never floats.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal

import attrs


def utc_from_ms(epoch_ms: int) -> datetime:
    """A UTC-aware datetime from integer epoch milliseconds, without a float round-trip."""
    seconds, millis = divmod(epoch_ms, 1000)
    return datetime.fromtimestamp(seconds, UTC).replace(microsecond=millis * 1000)


def ms_from_utc(moment: datetime) -> int:
    """Integer epoch milliseconds from an aware datetime (naive ones are refused: they are ambiguous)."""
    if moment.tzinfo is None:
        raise ValueError(f"naive datetime {moment.isoformat()} has no time zone; use UTC")
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


# A Binance symbol as the service accepts it everywhere (settings, the API, the feed, subscriptions).
SYMBOL_PATTERN = re.compile(r"^[A-Z0-9]{2,20}$")


@attrs.frozen(slots=True)
class Tick:
    """One trade, as Binance's ``@trade`` stream reports it."""

    symbol: str
    price: Decimal
    quantity: Decimal
    trade_time_ms: int
    event_time_ms: int
    trade_id: int
    # True when the buyer was the maker, i.e. the aggressor (taker) sold.
    is_buyer_maker: bool

    @property
    def trade_time(self) -> datetime:
        return utc_from_ms(self.trade_time_ms)

    @property
    def event_time(self) -> datetime:
        return utc_from_ms(self.event_time_ms)


@attrs.frozen(slots=True)
class Candle:
    """An OHLCV candle with Binance's kline fields; ``closed`` is False while its interval is running."""

    symbol: str
    interval: str
    open_time_ms: int
    close_time_ms: int
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal
    quote_volume: Decimal
    trade_count: int
    taker_buy_volume: Decimal
    taker_buy_quote_volume: Decimal
    # Binance reports -1 for both when the interval had no trade.
    first_trade_id: int
    last_trade_id: int
    closed: bool
    # 0 for the first closed version; a late trade (after a repaired gap) emits revision 1, 2, ...
    revision: int = 0
    # False when trades of the interval from before the service saw it (start-up, a symbol added, a resume after
    # a gap) could not be fetched from the exchange: the candle holds only the trades seen (see candle_seed.py).
    complete: bool = True

    @property
    def open_time(self) -> datetime:
        return utc_from_ms(self.open_time_ms)

    @property
    def close_time(self) -> datetime:
        return utc_from_ms(self.close_time_ms)


@attrs.frozen(slots=True)
class SeedRequest:
    """Binance's kline of (symbol, interval, open time) is wanted to complete a candle."""

    symbol: str
    interval: str
    open_time_ms: int


@attrs.frozen(slots=True)
class CandleSeed:
    """The answer to a ``SeedRequest``: the kline as a candle whose ``first_trade_id`` is the interval's first
    trade (from aggTrades) and ``last_trade_id`` = first + count - 1; None when it could not be fetched
    (``reason`` says why)."""

    symbol: str
    interval: str
    open_time_ms: int
    kline: Candle | None
    reason: str = ""


@attrs.frozen(slots=True)
class Gap:
    """Trades ``first_trade_id..last_trade_id`` (inclusive) of ``symbol`` that could not be recovered."""

    symbol: str
    first_trade_id: int
    last_trade_id: int
    reason: str
    detected_at_ms: int

    @property
    def missing_count(self) -> int:
        return self.last_trade_id - self.first_trade_id + 1


# --- what the HTTP API reports (read by the typed client, app/client.py) -----------------------------------


@attrs.frozen(slots=True)
class SymbolSummary:
    """One row of ``GET /api/symbols``."""

    symbol: str
    last_trade_id: int | None
    last_trade_time_ms: int | None
    last_tick_age_seconds: float | None
    ticks_received: int
    gaps_found: int
    gaps_repaired: int
    unrepaired_gaps: tuple[Gap, ...]
    backfilling: bool
    # Binance's status (``TRADING``, ``BREAK`` ...) or ``DELISTED``.
    trading_status: str


@attrs.frozen(slots=True)
class HealthProblem:
    code: str
    message: str


@attrs.frozen(slots=True)
class ServiceHealth:
    """``GET /health``: ``ok`` (200) or not (503) with the reasons."""

    status: str
    reasons: tuple[HealthProblem, ...] = ()
    ticks_published: int = 0
    # Symbol -> its trading status, for symbols the exchange stopped (not a reason for 503).
    stopped_symbols: dict[str, str] = attrs.Factory(dict)
    unrepaired_gaps: tuple[Gap, ...] = ()

    @property
    def ok(self) -> bool:
        return self.status == "ok"
