"""Kline interval alignment, checked against a datetime-based reference."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.intervals import INTERVAL_NAMES, Interval, UnknownIntervalError
from app.model import ms_from_utc, utc_from_ms

moments = st.integers(min_value=0, max_value=4_102_444_800_000)


def reference_open(name: str, epoch_ms: int) -> datetime:
    moment = utc_from_ms(epoch_ms)
    if name == "1M":
        return datetime(moment.year, moment.month, 1, tzinfo=UTC)
    if name == "1w":
        day = datetime(moment.year, moment.month, moment.day, tzinfo=UTC)
        return day - timedelta(days=day.weekday())
    unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}[name[-1]] * int(name[:-1])
    seconds = epoch_ms // 1000
    return datetime.fromtimestamp(seconds - seconds % unit, UTC)


@given(name=st.sampled_from(INTERVAL_NAMES), epoch_ms=moments)
def test_open_time_matches_reference_and_contains_the_moment(name: str, epoch_ms: int) -> None:
    interval = Interval(name)
    open_time = interval.open_time(epoch_ms)
    assert utc_from_ms(open_time) == reference_open(name, epoch_ms)
    close_time = interval.close_time(open_time)
    assert open_time <= epoch_ms <= close_time
    # The next interval opens one millisecond after this one closes.
    assert interval.open_time(close_time + 1) == close_time + 1
    assert interval.open_time(close_time) == open_time


def test_week_opens_on_monday_and_month_on_the_first() -> None:
    thursday = ms_from_utc(datetime(2024, 2, 29, 13, 5, tzinfo=UTC))
    assert utc_from_ms(Interval("1w").open_time(thursday)) == datetime(2024, 2, 26, tzinfo=UTC)
    assert utc_from_ms(Interval("1M").open_time(thursday)) == datetime(2024, 2, 1, tzinfo=UTC)
    assert utc_from_ms(Interval("1M").close_time(Interval("1M").open_time(thursday))) == datetime(
        2024, 2, 29, 23, 59, 59, 999000, tzinfo=UTC
    )
    december = ms_from_utc(datetime(2023, 12, 31, 23, 59, tzinfo=UTC))
    assert utc_from_ms(Interval("1M").next_open_time(Interval("1M").open_time(december))) == datetime(
        2024, 1, 1, tzinfo=UTC
    )


def test_unknown_interval_lists_valid_ones() -> None:
    with pytest.raises(UnknownIntervalError, match="unknown kline interval '2m'; valid: 1s, 1m"):
        Interval("2m")
