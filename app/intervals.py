"""Binance kline intervals and their UTC alignment.

Binance aligns every fixed-length interval (1s .. 3d) to multiples of its length since the Unix epoch, ``1w``
to Monday 00:00 UTC, and ``1M`` to the first day of the calendar month, 00:00 UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime

import attrs

from app.model import ms_from_utc, utc_from_ms

SECOND_MS = 1000
MINUTE_MS = 60 * SECOND_MS
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS
# The epoch (1970-01-01) was a Thursday; Monday 1970-01-05 is 4 days later.
_FIRST_MONDAY_MS = 4 * DAY_MS

_FIXED_LENGTHS_MS: dict[str, int] = {
    "1s": SECOND_MS,
    "1m": MINUTE_MS,
    "3m": 3 * MINUTE_MS,
    "5m": 5 * MINUTE_MS,
    "15m": 15 * MINUTE_MS,
    "30m": 30 * MINUTE_MS,
    "1h": HOUR_MS,
    "2h": 2 * HOUR_MS,
    "4h": 4 * HOUR_MS,
    "6h": 6 * HOUR_MS,
    "8h": 8 * HOUR_MS,
    "12h": 12 * HOUR_MS,
    "1d": DAY_MS,
    "3d": 3 * DAY_MS,
    "1w": 7 * DAY_MS,
}
# Binance's own order, shortest first.
INTERVAL_NAMES: tuple[str, ...] = (*_FIXED_LENGTHS_MS, "1M")


class UnknownIntervalError(ValueError):
    def __init__(self, name: str) -> None:
        super().__init__(f"unknown kline interval {name!r}; valid: {', '.join(INTERVAL_NAMES)}")
        self.name = name


@attrs.frozen(slots=True)
class Interval:
    """A kline interval: maps any trade time to the open time of the candle that holds it."""

    name: str

    def __attrs_post_init__(self) -> None:
        if self.name not in INTERVAL_NAMES:
            raise UnknownIntervalError(self.name)

    @property
    def nominal_ms(self) -> int:
        """Length in ms (a 1M interval counts as 30 days: for sorting and sizing only)."""
        return _FIXED_LENGTHS_MS.get(self.name, 30 * DAY_MS)

    def open_time(self, epoch_ms: int) -> int:
        """The open time of the interval that contains ``epoch_ms``."""
        if self.name == "1M":
            year, month = _year_month(epoch_ms)
            return _month_start_ms(year, month)
        length = _FIXED_LENGTHS_MS[self.name]
        if self.name == "1w":
            return epoch_ms - (epoch_ms - _FIRST_MONDAY_MS) % length
        return epoch_ms - epoch_ms % length

    def next_open_time(self, open_time_ms: int) -> int:
        """The open time of the interval after the one opening at ``open_time_ms``."""
        if self.name == "1M":
            year, month = _year_month(open_time_ms)
            return _month_start_ms(year + month // 12, month % 12 + 1)
        return open_time_ms + _FIXED_LENGTHS_MS[self.name]

    def close_time(self, open_time_ms: int) -> int:
        """Binance's close time: the last millisecond of the interval."""
        return self.next_open_time(open_time_ms) - 1


def parse_intervals(text: str) -> tuple[Interval, ...]:
    """``"1m,5m,1h"`` -> intervals, de-duplicated and sorted shortest first."""
    names = {part.strip() for part in text.split(",") if part.strip()}
    if not names:
        raise ValueError("no interval given")
    intervals = [Interval(name) for name in names]
    return tuple(sorted(intervals, key=lambda interval: INTERVAL_NAMES.index(interval.name)))


def _year_month(epoch_ms: int) -> tuple[int, int]:
    moment = utc_from_ms(epoch_ms)
    return moment.year, moment.month


def _month_start_ms(year: int, month: int) -> int:
    return ms_from_utc(datetime(year, month, 1, tzinfo=UTC))
