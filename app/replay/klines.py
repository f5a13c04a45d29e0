"""Binance klines computed from published trades, in the REST array shape.

Intervals without a trade between the first and the last trade are reported as Binance does: no trades,
zero volumes, first/last id -1 (not in the REST shape), open = high = low = close = the previous close.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from itertools import pairwise

import attrs

from app.intervals import Interval
from app.model import Tick

KlineRow = list[int | str]
_ZERO = Decimal(0)


@attrs.define(slots=True)
class _Builder:
    open_time: int
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal = _ZERO
    quote_volume: Decimal = _ZERO
    trades: int = 0
    taker_buy_volume: Decimal = _ZERO
    taker_buy_quote_volume: Decimal = _ZERO

    def add(self, tick: Tick) -> None:
        price, quantity = tick.price, tick.quantity
        if self.trades == 0:
            self.open = self.high = self.low = price
        elif price > self.high:
            self.high = price
        elif price < self.low:
            self.low = price
        self.close = price
        quote = price * quantity
        self.volume += quantity
        self.quote_volume += quote
        self.trades += 1
        if not tick.is_buyer_maker:  # the buyer was the taker
            self.taker_buy_volume += quantity
            self.taker_buy_quote_volume += quote

    def row(self, interval: Interval) -> KlineRow:
        return [
            self.open_time,
            _text(self.open),
            _text(self.high),
            _text(self.low),
            _text(self.close),
            _text(self.volume),
            interval.close_time(self.open_time),
            _text(self.quote_volume),
            self.trades,
            _text(self.taker_buy_volume),
            _text(self.taker_buy_quote_volume),
            "0",
        ]


def _text(value: Decimal) -> str:
    return f"{value:.8f}"


def build_klines(
    ticks: Sequence[Tick],
    interval: Interval,
    *,
    first_open: int | None = None,
    last_open: int | None = None,
    previous_close: Decimal | None = None,
    max_rows: int | None = None,
) -> list[KlineRow]:
    """Klines for ``ticks`` (in id order), gaps between trades filled with empty klines. A trade belongs to the
    kline of its trade time even when an earlier id has a later time; open and close are by id.

    With ``previous_close`` (the last price before ``first_open``) the window starts with empty klines from
    ``first_open``; with ``last_open`` it ends with empty klines up to that one. At most ``max_rows``.
    """
    if any(later.trade_time_ms < earlier.trade_time_ms for earlier, later in pairwise(ticks)):
        ticks = sorted(ticks, key=lambda tick: (interval.open_time(tick.trade_time_ms), tick.trade_id))
    rows: list[KlineRow] = []
    limit = max_rows if max_rows is not None else 2**62
    close = previous_close
    next_open = first_open if previous_close is not None else None
    current: _Builder | None = None

    def fill_until(open_time: int) -> None:
        nonlocal next_open
        while next_open is not None and close is not None and next_open < open_time and len(rows) < limit:
            rows.append(_Builder(next_open, close, close, close, close).row(interval))
            next_open = interval.next_open_time(next_open)

    for tick in ticks:
        open_time = interval.open_time(tick.trade_time_ms)
        if current is not None and open_time != current.open_time:
            rows.append(current.row(interval))
            close, next_open = current.close, interval.next_open_time(current.open_time)
            current = None
        if current is None:
            fill_until(open_time)
            if len(rows) >= limit:
                return rows
            current = _Builder(open_time, tick.price, tick.price, tick.price, tick.price)
        current.add(tick)
    if current is not None:
        rows.append(current.row(interval))
        close, next_open = current.close, interval.next_open_time(current.open_time)
    if last_open is not None:
        fill_until(last_open + 1)
    return rows[:limit]
