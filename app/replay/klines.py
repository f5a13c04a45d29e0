"""Binance klines computed from published trades, in the REST array shape.

Intervals without a trade between the first and the last trade are reported as Binance does: no trades,
zero volumes, first/last id -1 (not in the REST shape), open = high = low = close = the previous close.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

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


def build_klines(ticks: Sequence[Tick], interval: Interval) -> list[KlineRow]:
    """Klines for ``ticks`` (ascending trade time), gaps between trades filled with empty klines."""
    rows: list[KlineRow] = []
    current: _Builder | None = None
    for tick in ticks:
        open_time = interval.open_time(tick.trade_time_ms)
        if current is not None and open_time != current.open_time:
            rows.append(current.row(interval))
            previous_close = current.close
            gap_open = interval.next_open_time(current.open_time)
            while gap_open < open_time:
                rows.append(_Builder(gap_open, *(previous_close,) * 4).row(interval))
                gap_open = interval.next_open_time(gap_open)
            current = None
        if current is None:
            current = _Builder(open_time, tick.price, tick.price, tick.price, tick.price)
        current.add(tick)
    if current is not None:
        rows.append(current.row(interval))
    return rows
