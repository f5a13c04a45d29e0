"""The candle builder: real Binance klines, empty intervals, revisions, alignment, exact sums."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import orjson
import pytest

import app
from app.intervals import INTERVAL_NAMES, Interval
from app.model import Candle, Tick, ms_from_utc
from app.recording import read_recording
from app.store.candles import MAX_EMPTY_FILL, CandleBuilder

FIXTURE = Path(app.__file__).parent / "data" / "binance-spot-combined-2021-10-12.rec.zst"


def recorded_events(kind: str) -> list[dict[str, Any]]:
    _, frames = read_recording(FIXTURE)
    payloads = [orjson.loads(frame.frame)["data"] for frame in frames]
    return [payload for payload in payloads if payload.get("e") == kind]


def tick_from_single_agg_trade(payload: dict[str, Any]) -> Tick:
    """An ``aggTrade`` covering exactly one trade (``f == l``) is that trade."""
    assert payload["f"] == payload["l"], "an aggregate of several trades is not one tick"
    return Tick(payload["s"], Decimal(payload["p"]), Decimal(payload["q"]), payload["T"], payload["E"],
                payload["f"], payload["m"])


def candle_from_kline(payload: dict[str, Any]) -> Candle:
    k = payload["k"]
    return Candle(k["s"], k["i"], k["t"], k["T"], Decimal(k["o"]), Decimal(k["h"]), Decimal(k["l"]),
                  Decimal(k["c"]), Decimal(k["v"]), Decimal(k["q"]), k["n"], Decimal(k["V"]), Decimal(k["Q"]),
                  k["f"], k["L"], closed=k["x"])


def test_candle_from_a_real_trade_equals_binances_kline_field_by_field() -> None:
    """LRCBTC 2021-10-12 00:28: one trade (id 12368013) and Binance's own 1m kline for that minute."""
    trade = next(p for p in recorded_events("aggTrade") if p["s"] == "LRCBTC")
    kline = candle_from_kline(next(p for p in recorded_events("kline") if p["s"] == "LRCBTC"))
    builder = CandleBuilder([Interval("1m")])
    assert builder.update(tick_from_single_agg_trade(trade)) == []
    assert builder.open_candle("LRCBTC", "1m") == kline
    # The numbers the fixture's README promises, spelled out.
    assert kline.quote_volume == Decimal("0.00112926")
    assert kline.taker_buy_volume == Decimal("177")
    assert (kline.first_trade_id, kline.last_trade_id, kline.trade_count) == (12368013, 12368013, 1)


def test_real_kline_with_earlier_trades_ends_with_the_recorded_trade() -> None:
    """NKNUSDT: the recording holds only the minute's last trade; Binance's kline must end with it."""
    trade = tick_from_single_agg_trade(next(p for p in recorded_events("aggTrade") if p["s"] == "NKNUSDT"))
    kline = candle_from_kline(next(p for p in recorded_events("kline") if p["s"] == "NKNUSDT"))
    builder = CandleBuilder([Interval("1m")])
    builder.update(trade)
    mine = builder.open_candle("NKNUSDT", "1m")
    assert mine is not None
    assert (mine.open_time_ms, mine.close_time_ms) == (kline.open_time_ms, kline.close_time_ms)
    assert (mine.close, mine.last_trade_id) == (kline.close, kline.last_trade_id)


def tick(time_ms: int, trade_id: int, price: str = "10", quantity: str = "1", *, maker: bool = False,
         symbol: str = "BTCUSDT") -> Tick:
    return Tick(symbol, Decimal(price), Decimal(quantity), time_ms, time_ms, trade_id, maker)


MINUTE = 60_000
T0 = ms_from_utc(datetime(2024, 8, 8, 23, 55, tzinfo=UTC))


def test_a_trade_after_empty_minutes_closes_them_as_binance_does() -> None:
    builder = CandleBuilder([Interval("1m")])
    builder.update(tick(T0 + 5, 1, "10"))
    builder.update(tick(T0 + 59_999, 2, "12", maker=True))
    closed = builder.update(tick(T0 + 3 * MINUTE, 3, "11"))
    assert [c.open_time_ms for c in closed] == [T0, T0 + MINUTE, T0 + 2 * MINUTE]
    first, *empties = closed
    assert (first.open, first.close, first.trade_count, first.taker_buy_volume) == (10, 12, 2, 1)
    for empty in empties:
        assert (empty.open, empty.high, empty.low, empty.close) == (12, 12, 12, 12)
        assert (empty.first_trade_id, empty.last_trade_id, empty.trade_count, empty.volume) == (-1, -1, 0, 0)
        assert empty.closed and empty.close_time_ms == empty.open_time_ms + MINUTE - 1
    assert builder.counters.empty_candles == 2


def test_clock_closes_a_candle_and_opens_an_empty_one() -> None:
    builder = CandleBuilder([Interval("1m")])
    builder.update(tick(T0 + 5, 1, "10"))
    assert builder.close_due("BTCUSDT", T0 + MINUTE - 1) == []  # not yet past its close time
    (closed,) = builder.close_due("BTCUSDT", T0 + MINUTE)
    assert closed.trade_count == 1 and closed.closed
    current = builder.open_candle("BTCUSDT", "1m")
    assert current is not None and current.trade_count == 0 and current.open_time_ms == T0 + MINUTE
    assert current.close == 10 and not current.closed


def test_a_stopped_symbols_candle_closes_and_no_empty_ones_follow() -> None:
    builder = CandleBuilder([Interval("1m"), Interval("1h")])
    builder.update(tick(T0 + 5, 1, "10"))
    assert builder.close_due("BTCUSDT", T0 + MINUTE - 1, stopped=True) == []  # not yet past its close time
    (closed,) = builder.close_due("BTCUSDT", T0 + 2 * MINUTE, stopped=True)
    assert (closed.interval, closed.trade_count, closed.closed) == ("1m", 1, True)
    assert builder.open_candle("BTCUSDT", "1m") is None  # no empty candle opened after it
    assert builder.open_candle("BTCUSDT", "1h") is not None  # the hour is not over yet
    assert builder.next_close_ms("BTCUSDT") == T0 - T0 % 3_600_000 + 3_600_000 - 1
    # Trading again: its next trade opens a candle of its own, with no empty minutes made up for the stop.
    assert builder.update(tick(T0 + 3 * MINUTE + 7, 2, "12")) == []
    resumed = builder.open_candle("BTCUSDT", "1m")
    assert resumed is not None and (resumed.open_time_ms, resumed.open, resumed.trade_count) == (
        T0 + 3 * MINUTE, 12, 1)


def test_a_late_trade_for_a_stopped_symbols_closed_candle_revises_it() -> None:
    builder = CandleBuilder([Interval("1m")])
    builder.update(tick(T0 + 5, 1, "10"))
    builder.close_due("BTCUSDT", T0 + MINUTE, stopped=True)
    (revised,) = builder.update(tick(T0 + 30, 2, "11"))
    assert (revised.open_time_ms, revised.trade_count, revised.revision, revised.close) == (T0, 2, 1, 11)
    assert builder.open_candle("BTCUSDT", "1m") is None


def test_late_trade_revises_the_closed_candle_and_the_empty_ones_after_it() -> None:
    builder = CandleBuilder([Interval("1m")])
    builder.update(tick(T0 + 5, 10, "10"))
    builder.update(tick(T0 + 3 * MINUTE, 14, "13"))  # closes T0 and two empty minutes
    revised = builder.update(tick(T0 + 30_000, 11, "20"))  # repaired gap: trade 11 was missing
    assert [(c.open_time_ms, c.revision, c.close) for c in revised] == [
        (T0, 1, 20), (T0 + MINUTE, 1, 20), (T0 + 2 * MINUTE, 1, 20)]
    assert revised[0].high == 20 and revised[0].last_trade_id == 11 and revised[0].trade_count == 2
    assert builder.counters.late_trades == 1 and builder.counters.revisions == 3
    assert builder.recent_closed("BTCUSDT", "1m", None, None, 10) == revised


def test_late_trade_older_than_the_ring_is_counted_not_applied() -> None:
    builder = CandleBuilder([Interval("1m")], recent_limit=2)
    builder.update(tick(T0, 1))
    builder.update(tick(T0 + 5 * MINUTE, 3))
    assert builder.update(tick(T0 + 1, 2)) == []
    assert builder.counters.late_trades_unrevisable == 1


def test_quote_volume_stays_exact_beyond_28_digits() -> None:
    builder = CandleBuilder([Interval("1d")])
    price, quantity = "98765432.12345678", "12345678.87654321"
    for trade_id in range(3):
        builder.update(tick(T0 + trade_id, trade_id, price, quantity))
    candle = builder.open_candle("BTCUSDT", "1d")
    assert candle is not None
    # 32 significant digits: the default decimal context (28) would round it.
    assert Fraction(candle.quote_volume) == 3 * Fraction(price) * Fraction(quantity)


@pytest.mark.parametrize(
    ("name", "moment", "expected_open"),
    [
        ("1w", datetime(2024, 8, 8, 23, 59, tzinfo=UTC), datetime(2024, 8, 5, tzinfo=UTC)),  # Thu -> Mon
        ("1w", datetime(2024, 8, 5, tzinfo=UTC), datetime(2024, 8, 5, tzinfo=UTC)),
        ("1w", datetime(2024, 8, 4, 23, 59, 59, 999_000, tzinfo=UTC), datetime(2024, 7, 29, tzinfo=UTC)),
        ("1M", datetime(2024, 2, 29, 12, tzinfo=UTC), datetime(2024, 2, 1, tzinfo=UTC)),
        ("1M", datetime(2024, 12, 31, 23, 59, tzinfo=UTC), datetime(2024, 12, 1, tzinfo=UTC)),
        ("3d", datetime(1970, 1, 3, 23, tzinfo=UTC), datetime(1970, 1, 1, tzinfo=UTC)),
        ("4h", datetime(2024, 8, 8, 3, 59, tzinfo=UTC), datetime(2024, 8, 8, 0, tzinfo=UTC)),
    ],
)
def test_open_time_alignment(name: str, moment: datetime, expected_open: datetime) -> None:
    assert Interval(name).open_time(ms_from_utc(moment)) == ms_from_utc(expected_open)


def test_month_close_time_is_the_last_millisecond_of_the_month() -> None:
    builder = CandleBuilder([Interval("1M")])
    builder.update(tick(ms_from_utc(datetime(2024, 12, 15, tzinfo=UTC)), 1))
    candle = builder.open_candle("BTCUSDT", "1M")
    assert candle is not None
    assert candle.close_time_ms == ms_from_utc(datetime(2025, 1, 1, tzinfo=UTC)) - 1


def test_recent_closed_follows_binances_start_and_limit_rules() -> None:
    builder = CandleBuilder([Interval("1m")])
    for minute in range(6):
        builder.update(tick(T0 + minute * MINUTE, minute))
    opens = [c.open_time_ms for c in builder.recent_closed("BTCUSDT", "1m", None, None, 2)]
    assert opens == [T0 + 3 * MINUTE, T0 + 4 * MINUTE]  # the last two
    opens = [c.open_time_ms for c in builder.recent_closed("BTCUSDT", "1m", T0 + MINUTE, None, 2)]
    assert opens == [T0 + MINUTE, T0 + 2 * MINUTE]  # the first two from the start
    opens = [c.open_time_ms for c in builder.recent_closed("BTCUSDT", "1m", None, T0 + MINUTE, 5)]
    assert opens == [T0, T0 + MINUTE]
    assert builder.recent_closed("BTCUSDT", "5m", None, None, 5) == []


def test_every_interval_name_builds() -> None:
    builder = CandleBuilder([Interval(name) for name in INTERVAL_NAMES])
    builder.update(tick(T0, 1))
    assert all(builder.open_candle("BTCUSDT", name) is not None for name in INTERVAL_NAMES)


def test_a_trade_already_in_a_complete_closed_candle_is_not_counted_twice() -> None:
    """After a restart the ingest resumes from the last stored tick, which may be behind the stored candles."""
    builder = CandleBuilder([Interval("1m")])
    builder.update_many([tick(T0 + 1, 10), tick(T0 + 2, 11), tick(T0 + MINUTE, 12)])
    assert builder.update(tick(T0 + 2, 11)) == []
    assert builder.counters.duplicate_trades == 1 and builder.counters.late_trades == 0
    (closed,) = builder.recent_closed("BTCUSDT", "1m", None, None, 5)
    assert closed.trade_count == 2 and closed.revision == 0


def test_tiling_chains_follow_binances_alignment() -> None:
    builder = CandleBuilder([Interval(name) for name in INTERVAL_NAMES])
    assert [i.name for i in builder.tiling_chain(Interval("1M"))] == ["1M", "1d", "12h", "6h", "2h", "1h", "30m",
                                                                     "15m", "5m", "1m", "1s"]
    assert [i.name for i in builder.tiling_chain(Interval("1w"))][:3] == ["1w", "1d", "12h"]
    assert [i.name for i in builder.tiling_chain(Interval("3d"))][:2] == ["3d", "1d"]
    assert [i.name for i in builder.tiling_chain(Interval("8h"))][:3] == ["8h", "4h", "2h"]
    odd = CandleBuilder([Interval("3m"), Interval("5m")])
    assert odd.tiling_chain(Interval("5m")) == [Interval("5m")]


def test_memory_keeps_about_two_hours_of_closed_candles_per_series_within_bounds() -> None:
    builder = CandleBuilder([Interval(name) for name in ("1s", "1m", "5m", "1M")])
    assert [builder.ring_size(Interval(name)) for name in ("1s", "1m", "5m", "1M")] == [1000, 120, 60, 60]
    for minute in range(200):
        builder.update(tick(T0 + minute * MINUTE, minute))
    assert len(builder.recent_closed("BTCUSDT", "1m", None, None, 1000)) == 120
    assert builder.oldest_recent_open_ms("BTCUSDT", "1m") == T0 + (199 - 120) * MINUTE


def test_a_very_long_silence_produces_a_bounded_number_of_empty_candles() -> None:
    builder = CandleBuilder([Interval("1s")])
    builder.update(tick(T0, 1, "10"))
    week_later = T0 + 7 * 86_400_000
    closed = builder.update(tick(week_later, 2, "11"))  # 604,799 empty seconds
    assert len(closed) == 1 + MAX_EMPTY_FILL
    assert builder.counters.empty_candles_skipped == 604_799 - MAX_EMPTY_FILL
    assert closed[0].open_time_ms == T0 and closed[0].trade_count == 1
    # The empty candles produced are the last seconds before the trade, one per second, none skipped among them.
    empty = closed[1:]
    assert [c.open_time_ms for c in empty] == list(range(week_later - MAX_EMPTY_FILL * 1000, week_later, 1000))
    assert all(c.trade_count == 0 and c.volume == 0 and c.open == c.close == 10 for c in empty)
