"""TradeSequence: exactly once, in id order, holes visible (pure; Hypothesis over delivery orders)."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from app.ingest.sequence import TradeSequence
from app.ingest.status import SymbolStatus
from app.model import Tick


def tick(trade_id: int, symbol: str = "BTCUSDT") -> Tick:
    return Tick(symbol=symbol, price=Decimal("100.5"), quantity=Decimal("0.1"), trade_time_ms=trade_id,
                event_time_ms=trade_id, trade_id=trade_id, is_buyer_maker=trade_id % 2 == 0)


def sequence(next_id: int | None = None) -> TradeSequence:
    return TradeSequence("BTCUSDT", next_id, SymbolStatus("BTCUSDT"))


def ids(ticks: list[Tick]) -> list[int]:
    return [t.trade_id for t in ticks]


def test_first_tick_without_history_is_emitted_and_fixes_the_next_id() -> None:
    seq = sequence()
    assert ids(seq.offer(tick(500))) == [500]
    assert seq.next_id == 501


def test_duplicates_are_dropped_and_counted() -> None:
    seq = sequence(10)
    assert ids(seq.offer(tick(10))) == [10]
    assert seq.offer(tick(10)) == []
    assert seq.offer(tick(3)) == []
    assert seq.status.duplicates_dropped == 2


def test_a_skipped_id_holds_later_ticks_and_reports_the_hole() -> None:
    seq = sequence(10)
    assert seq.offer(tick(13)) == []
    assert seq.offer(tick(14)) == []
    assert seq.hole() == (10, 12)
    assert ids(seq.offer(tick(10))) == [10]
    assert ids(seq.offer(tick(11))) == [11]
    assert ids(seq.offer(tick(12))) == [12, 13, 14]
    assert seq.hole() is None


def test_resume_from_persisted_id_makes_the_first_live_tick_reveal_the_hole() -> None:
    seq = sequence(next_id=1001)  # stored up to 1000
    assert seq.offer(tick(1500)) == []
    assert seq.hole() == (1001, 1499)


def test_advance_to_gives_up_the_hole_and_releases_held_ticks() -> None:
    seq = sequence(10)
    for trade_id in (15, 16, 20):
        seq.offer(tick(trade_id))
    assert ids(seq.advance_to(15)) == [15, 16]
    assert seq.hole() == (17, 19)
    assert seq.advance_to(12) == []  # never backwards
    assert ids(seq.advance_to(20)) == [20]
    assert seq.held == []


def test_held_ticks_below_an_advance_are_dropped() -> None:
    seq = sequence(10)
    for trade_id in (12, 30):
        seq.offer(tick(trade_id))
    assert seq.advance_to(25) == []
    assert ids(seq.held) == [30]


def test_an_anchoring_sequence_holds_until_it_knows_where_the_stream_starts() -> None:
    seq = sequence()
    seq.anchoring = True
    assert seq.offer(tick(105)) == []
    assert seq.offer(tick(106)) == []
    assert seq.hole() is None  # nothing to repair until the start is known
    assert seq.anchor(101) == []
    assert seq.hole() == (101, 104)
    assert ids(seq.offer(tick(101))) == [101]


def test_anchoring_at_the_first_held_tick_releases_everything_held() -> None:
    seq = sequence()
    seq.anchoring = True
    seq.offer(tick(7))
    seq.offer(tick(8))
    assert ids(seq.anchor(7)) == [7, 8]
    assert seq.next_id == 9 and not seq.anchoring


@st.composite
def deliveries(draw: st.DrawFn) -> tuple[int, int, list[int]]:
    """A consecutive id range and a live delivery: some ids lost, some repeated, local reordering."""
    first = draw(st.integers(min_value=0, max_value=10**12))
    count = draw(st.integers(min_value=1, max_value=300))
    live: list[int] = []
    for trade_id in range(first, first + count):
        copies = draw(st.sampled_from([0, 1, 1, 1, 1, 2]))
        live.extend([trade_id] * copies)
    # Two overlapping connections deliver in interleaved, locally disordered fashion.
    swaps = draw(st.lists(st.integers(min_value=0, max_value=max(len(live) - 2, 0)), max_size=50))
    for index in swaps:
        if index + 1 < len(live):
            live[index], live[index + 1] = live[index + 1], live[index]
    return first, count, live


@given(deliveries())
def test_any_delivery_plus_backfill_emits_every_id_once_in_order(case: tuple[int, int, list[int]]) -> None:
    first, count, live = case
    seq = sequence(first)
    emitted: list[int] = []
    for trade_id in live:
        emitted.extend(ids(seq.offer(tick(trade_id))))
        # Repair like the sequencer does: fetch the hole's ids in order ("REST" has them all).
        while (hole := seq.hole()) is not None:
            for missing in range(hole[0], hole[1] + 1):
                emitted.extend(ids(seq.offer(tick(missing))))
    # The tail lost after the last delivered tick is only known when a later trade arrives.
    emitted.extend(ids(seq.offer(tick(first + count))))
    while (hole := seq.hole()) is not None:
        for missing in range(hole[0], hole[1] + 1):
            emitted.extend(ids(seq.offer(tick(missing))))
    assert emitted == list(range(first, first + count + 1))


@given(st.lists(st.integers(min_value=0, max_value=200), max_size=300))
def test_emitted_ids_are_strictly_consecutive_whatever_arrives(arrivals: list[int]) -> None:
    seq = sequence(0)
    emitted: list[int] = []
    for trade_id in arrivals:
        emitted.extend(ids(seq.offer(tick(trade_id))))
    assert emitted == list(range(len(emitted)))
    assert ids(seq.held) == sorted(set(ids(seq.held)))
    assert all(trade_id > len(emitted) for trade_id in ids(seq.held))
