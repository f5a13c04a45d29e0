"""TradeSequencer, the sequencer's pure decisions: what goes out, duplicates, holes, what a repair fetches, what
is given up (no Trio, no sockets; Hypothesis against a simple reference of what the exchange had)."""

from __future__ import annotations

from decimal import Decimal

import attrs
from hypothesis import given
from hypothesis import strategies as st

from app.ingest.sequencer import Decisions, Repair, TradeSequencer
from app.ingest.status import IngestStatus
from app.model import Tick

BASE_MS = 1_723_161_240_000


def tick(trade_id: int, symbol: str = "BTCUSDT", time_ms: int | None = None) -> Tick:
    time_ms = BASE_MS + trade_id if time_ms is None else time_ms
    return Tick(symbol=symbol, price=Decimal("100.5"), quantity=Decimal("0.1"), trade_time_ms=time_ms,
                event_time_ms=time_ms, trade_id=trade_id, is_buyer_maker=trade_id % 2 == 0)


def ids(batches: list[list[Tick]]) -> list[int]:
    return [t.trade_id for batch in batches for t in batch]


def sequencer(status: IngestStatus | None = None, *, can_repair: bool = True, max_backfill: int = 10**6,
              max_held: int = 10**6, wall_ms: int = BASE_MS) -> TradeSequencer:
    return TradeSequencer(status or IngestStatus(), can_repair=can_repair, max_backfill_trades=max_backfill,
                          max_held=max_held, wall_ms=lambda: wall_ms)


def test_ticks_due_go_out_as_one_batch_and_others_are_ignored() -> None:
    status = IngestStatus()
    core = sequencer(status)
    core.track("BTCUSDT", last_trade_id=9)
    decisions = core.accept([tick(10), tick(11), tick(1, "XRPUSDT"), tick(12)], now=5.0)
    assert decisions == Decisions(ready=[[tick(10), tick(11), tick(12)]])
    assert status.ticks_ignored == 1
    btc = status.symbols["BTCUSDT"]
    assert (btc.ticks_received, btc.ticks_emitted, btc.last_trade_id, btc.last_tick_at) == (3, 3, 12, 5.0)


def test_a_hole_starts_one_repair_for_exactly_the_missing_ids() -> None:
    core = sequencer()
    core.track("BTCUSDT", last_trade_id=9)
    decisions = core.accept([tick(10), tick(14), tick(15)], now=0.0)
    assert ids(decisions.ready) == [10]
    [repair] = decisions.start
    assert (repair.symbol, repair.first_id, repair.last_id, repair.anchoring) == ("BTCUSDT", 11, 13, False)
    # A later tick joins the held ones: no second repair while one runs.
    assert core.accept([tick(16)], now=0.0) == Decisions()
    assert ids(core.backfilled(repair, [tick(11), tick(12), tick(13)]).ready) == [11, 12, 13, 14, 15, 16]
    assert core.repair_ended(repair, None) == Decisions()
    assert core.sequences["BTCUSDT"].status.gaps_repaired == 1


def test_duplicates_are_dropped_and_counted() -> None:
    core = sequencer()
    core.track("BTCUSDT", last_trade_id=9)
    assert ids(core.accept([tick(10), tick(10), tick(9)], now=0.0).ready) == [10]
    assert core.sequences["BTCUSDT"].status.duplicates_dropped == 2


def test_a_hole_beyond_max_backfill_is_a_gap_for_the_oldest_ids_and_a_repair_for_the_rest() -> None:
    core = sequencer(max_backfill=100)
    core.track("BTCUSDT", last_trade_id=0)
    decisions = core.accept([tick(1001)], now=0.0)
    [repair] = decisions.start
    assert (repair.first_id, repair.last_id) == (901, 1000)
    [gap] = core.sequences["BTCUSDT"].status.unrepaired_gaps
    assert (gap.first_trade_id, gap.last_trade_id) == (1, 900) and "MAX_BACKFILL_TRADES=100" in gap.reason


def test_without_rest_a_hole_is_given_up_at_once() -> None:
    core = sequencer(can_repair=False)
    core.track("BTCUSDT", last_trade_id=9)
    decisions = core.accept([tick(12)], now=0.0)
    assert ids(decisions.ready) == [12] and decisions.start == []
    [gap] = core.sequences["BTCUSDT"].status.unrepaired_gaps
    assert (gap.first_trade_id, gap.last_trade_id, gap.reason) == (10, 11, "no REST endpoint to backfill from")


def test_too_many_held_ticks_cancel_the_repair_and_give_the_hole_up() -> None:
    core = sequencer(max_held=3)
    core.track("BTCUSDT", last_trade_id=0)
    [repair] = core.accept([tick(5)], now=0.0).start
    decisions = core.accept([tick(6), tick(7), tick(8)], now=0.0)
    assert decisions.cancel == [repair] and not core.is_current(repair)
    assert ids(decisions.ready) == [5, 6, 7, 8]
    [gap] = core.sequences["BTCUSDT"].status.unrepaired_gaps
    assert (gap.first_trade_id, gap.last_trade_id) == (1, 4) and "more than 3 live trades" in gap.reason
    # The cancelled repair's late page changes nothing.
    assert core.backfilled(repair, [tick(1)]) == Decisions()


def test_what_rest_did_not_serve_becomes_a_gap_with_the_repairs_error() -> None:
    core = sequencer()
    core.track("BTCUSDT", last_trade_id=0)
    [repair] = core.accept([tick(10)], now=0.0).start
    assert ids(core.backfilled(repair, [tick(1), tick(2)]).ready) == [1, 2]
    decisions = core.repair_ended(repair, "backfill failed: HTTP 503")
    assert ids(decisions.ready) == [10]
    [gap] = core.sequences["BTCUSDT"].status.unrepaired_gaps
    assert (gap.first_trade_id, gap.last_trade_id, gap.reason) == (3, 9, "backfill failed: HTTP 503")


def test_stored_ids_ahead_of_the_exchange_stream_from_the_live_id() -> None:
    status = IngestStatus()
    core = sequencer(status)
    core.track("BTCUSDT", last_trade_id=5000)
    assert ids(core.accept([tick(70), tick(71)], now=0.0).ready) == [70, 71]
    assert status.resume_mismatches == 1


def test_the_exchanges_last_id_reveals_a_quiet_symbols_hole() -> None:
    core = sequencer()
    core.track("BTCUSDT", last_trade_id=9)
    assert core.wants_last_id("BTCUSDT", disconnects=0)
    sequence = core.sequences["BTCUSDT"]
    assert core.behind({"BTCUSDT": sequence}, {"BTCUSDT": 9}) == {}
    assert core.behind({"BTCUSDT": sequence}, {"BTCUSDT": 12}) == {"BTCUSDT": sequence}
    [repair] = core.apply_last_id(sequence, 12).start
    assert (repair.first_id, repair.last_id) == (10, 12)


def test_a_fresh_symbol_is_anchored_only_after_a_disconnect_and_by_the_exchanges_clock() -> None:
    status = IngestStatus()
    # Our clock is 10 minutes behind the exchange's.
    core = sequencer(status, wall_ms=BASE_MS - 600_000)
    core.track("BTCUSDT")
    core.track("ETHUSDT")
    assert not core.wants_last_id("ETHUSDT", disconnects=0)
    assert ids(core.accept([tick(100, "BTCUSDT")], now=0.0).ready) == [100]  # no disconnect: starts here
    assert core.exchange_offset_ms == 100 + 600_000
    status.disconnects += 1
    assert core.wants_last_id("ETHUSDT", disconnects=1)
    decisions = core.accept([tick(50, "ETHUSDT")], now=0.0)
    [repair] = decisions.start
    assert decisions.ready == [] and repair.anchoring
    assert (repair.first_id, repair.subscribed_at_ms, repair.exchange_offset_ms) == (50, BASE_MS - 600_000, 600_100)
    # The anchor found trades 48 and 49 since the subscription: they go out before the held live one.
    assert ids(core.anchored(repair, 48, [[tick(48, "ETHUSDT"), tick(49, "ETHUSDT")]], None).ready) == [48, 49, 50]


def test_close_out_gives_up_what_is_still_missing_and_cancels_the_repair() -> None:
    core = sequencer()
    core.track("BTCUSDT", last_trade_id=0)
    [repair] = core.accept([tick(3)], now=0.0).start
    decisions = core.close_out(core.sequences["BTCUSDT"])
    assert decisions.cancel == [repair] and ids(decisions.ready) == [3]
    [gap] = core.sequences["BTCUSDT"].status.unrepaired_gaps
    assert (gap.first_trade_id, gap.last_trade_id) == (1, 2) and "unsubscribed" in gap.reason
    assert core.forget("BTCUSDT") == Decisions()
    assert core.accept([tick(4)], now=0.0) == Decisions()


# --- the property: whatever arrives and whatever REST does, every id is emitted once in order or reported ---


@attrs.define
class Exchange:
    """The reference: the exchange's trades of one symbol are ids 1..last; REST keeps ids from ``retained_from``."""

    last: int
    retained_from: int
    page_limit: int

    def page(self, from_id: int, to_id: int) -> list[Tick]:
        first = max(from_id, self.retained_from)
        return [tick(trade_id) for trade_id in range(first, min(to_id, first + self.page_limit - 1) + 1)]


@attrs.define
class Driver:
    """Carries out decisions the way GapRepair does, with REST answered by ``exchange``."""

    core: TradeSequencer
    exchange: Exchange
    max_backfill: int
    emitted: list[int] = attrs.Factory(list)
    running: dict[Repair, int] = attrs.Factory(dict)  # repair -> next id to fetch

    def carry_out(self, decisions: Decisions) -> None:
        for repair in decisions.cancel:
            self.running.pop(repair, None)
        self.emitted.extend(ids(decisions.ready))
        for repair in decisions.start:
            assert not repair.anchoring  # no disconnects here
            # What a repair fetches: from the first id neither emitted nor given up, to just below the first
            # held tick (or the exchange's last id), at most max_backfill ids.
            status = self.core.sequences[repair.symbol].status
            settled = self.emitted + [gap.last_trade_id for gap in status.unrepaired_gaps]
            if settled:
                assert repair.first_id == max(settled) + 1
            held = self.core.sequences[repair.symbol].held
            assert repair.last_id == (held[0].trade_id - 1 if held else self.exchange.last)
            assert repair.last_id - repair.first_id + 1 <= self.max_backfill
            self.running[repair] = repair.first_id

    def step(self, fail: bool) -> None:
        repair, next_id = next(iter(self.running.items()))
        if fail:
            del self.running[repair]
            self.carry_out(self.core.repair_ended(repair, "backfill failed: HTTP 503"))
            return
        page = self.exchange.page(next_id, repair.last_id)
        if not page or next_id > repair.last_id:
            del self.running[repair]
            self.carry_out(self.core.repair_ended(repair, None))
            return
        self.running[repair] = page[-1].trade_id + 1
        self.carry_out(self.core.backfilled(repair, page))


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[Exchange, int | None, list[int], list[str], int, int]:
    last = draw(st.integers(min_value=1, max_value=60))
    exchange = Exchange(last, draw(st.integers(min_value=1, max_value=last + 1)), draw(st.integers(1, 25)))
    resume = draw(st.none() | st.integers(min_value=0, max_value=last - 1))
    # Live delivery (from after the stored id: the stream starts now): ids in rising order with losses and
    # repeats, a little reordering.
    live = [
        trade_id for trade_id in range((resume or 0) + 1, last + 1)
        for _ in range(draw(st.sampled_from([0, 1, 1, 1, 2])))
    ]
    for index in draw(st.lists(st.integers(min_value=0, max_value=max(len(live) - 2, 0)), max_size=20)):
        if index + 1 < len(live):
            live[index], live[index + 1] = live[index + 1], live[index]
    steps = draw(st.lists(st.sampled_from(["live", "live", "page", "fail", "last_id"]), max_size=150))
    return exchange, resume, live, steps, draw(st.integers(1, 80)), draw(st.integers(1, 80))


@given(scenarios())
def test_every_trade_is_emitted_once_in_order_or_reported_as_a_gap(
    case: tuple[Exchange, int | None, list[int], list[str], int, int],
) -> None:
    exchange, resume, live, steps, max_backfill, max_held = case
    core = sequencer(max_backfill=max_backfill, max_held=max_held)
    core.track("BTCUSDT", resume)
    driver = Driver(core, exchange, max_backfill)
    pending = list(live)
    for step in steps:
        if step == "live" and pending:
            driver.carry_out(core.accept([tick(pending.pop(0))], now=0.0))
        elif step in ("page", "fail") and driver.running:
            driver.step(fail=step == "fail")
        elif step == "last_id":
            driver.carry_out(core.apply_last_id(core.sequences["BTCUSDT"], exchange.last))
    for trade_id in pending:
        driver.carry_out(core.accept([tick(trade_id)], now=0.0))
    # The end: the exchange's last id is asked, and REST is let to finish every repair.
    driver.carry_out(core.apply_last_id(core.sequences["BTCUSDT"], exchange.last))
    while driver.running:
        driver.step(fail=False)

    status = core.sequences["BTCUSDT"].status
    gap_ids = [i for gap in status.unrepaired_gaps for i in range(gap.first_trade_id, gap.last_trade_id + 1)]
    if resume is not None:
        start = resume + 1
    elif live:
        start = live[0]  # a fresh symbol starts at its first live trade
    else:
        assert driver.emitted == [] and gap_ids == []
        return
    # Each id once, in order; together with the reported gaps, exactly the exchange's ids from the start.
    assert driver.emitted == sorted(set(driver.emitted))
    assert sorted(driver.emitted + gap_ids) == list(range(start, exchange.last + 1))
    assert status.trades_lost == len(gap_ids)
    assert status.last_trade_id == (driver.emitted[-1] if driver.emitted else resume)
    assert not core.repairs and not core.sequences["BTCUSDT"].held
    # Nothing is given up that REST could serve, unless a limit or a failure said so.
    if "fail" not in steps and exchange.retained_from <= start and max_backfill >= exchange.last:
        if max_held >= len(live):
            assert gap_ids == []
