"""The leader's continuity rule, against a reference, over random takeovers."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from app.bus.continuity import Continuity, Hole, StandbyBuffer
from app.model import Tick


def tick(symbol: str, trade_id: int) -> Tick:
    return Tick(symbol, Decimal("1"), Decimal("1"), trade_id, trade_id, trade_id, False)


def test_trades_already_published_are_dropped_and_the_hole_before_the_first_new_one_reported() -> None:
    continuity = Continuity({"BTCUSDT": 10, "ETHUSDT": 5})
    fresh, holes = continuity.plan([tick("BTCUSDT", 9), tick("BTCUSDT", 10), tick("BTCUSDT", 11),
                                    tick("ETHUSDT", 8), tick("SOLUSDT", 100)])
    assert [(t.symbol, t.trade_id) for t in fresh] == [("BTCUSDT", 11), ("ETHUSDT", 8), ("SOLUSDT", 100)]
    assert holes == [Hole("ETHUSDT", 6, 7)]


@given(
    published=st.integers(min_value=0, max_value=50),
    buffered_from=st.integers(min_value=1, max_value=60),
    count=st.integers(min_value=0, max_value=40),
    kept=st.integers(min_value=1, max_value=30),
)
def test_a_takeover_publishes_every_trade_after_the_last_published_once(
    published: int, buffered_from: int, count: int, kept: int
) -> None:
    buffer = StandbyBuffer(max_per_symbol=kept)
    buffer.add(tick("BTCUSDT", trade_id) for trade_id in range(buffered_from, buffered_from + count))
    continuity = Continuity({"BTCUSDT": published})
    fresh, holes = continuity.plan(buffer.drain())
    # Reference: the new leader's output is the hole (fetched over REST) then the fresh trades, and together
    # they are exactly published+1 .. the last trade it received.
    filled = [trade_id for hole in holes for trade_id in range(hole.first_trade_id, hole.last_trade_id + 1)]
    ids = filled + [t.trade_id for t in fresh]
    newest = buffered_from + count - 1 if count else published
    assert ids == list(range(published + 1, max(published, newest) + 1))
    continuity.advance(fresh)
    assert continuity.last_published("BTCUSDT") == max(published, newest)


def test_a_quiet_symbol_catches_up_to_the_exchanges_last_trade_and_a_streaming_one_is_left_to_the_stream() -> None:
    continuity = Continuity({"BTCUSDT": 10, "ETHUSDT": 5, "BNBUSDT": 7})
    fresh, _ = continuity.plan([tick("BTCUSDT", 11)])
    holes = continuity.catch_up({"BTCUSDT": 15, "ETHUSDT": 9, "BNBUSDT": 7, "SOLUSDT": 3}, fresh)
    # BTCUSDT's 12..15 are on their way over the stream; SOLUSDT was never published: it starts live.
    assert holes == [Hole("ETHUSDT", 6, 9)]
