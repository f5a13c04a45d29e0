"""The sequencer's decisions: every trade of every subscribed symbol exactly once, in id order, holes found.

Pure (no Trio, no I/O; times are passed in or read from an injected clock): ``TradeSequencer`` keeps one
``TradeSequence`` per symbol and, for each live tick, each backfilled page, each exchange last trade id and each
repair that ends, decides what may be emitted now, what is a duplicate, what is a hole, which range a repair
must fetch, and what is given up as a ``Gap``. It answers with ``Decisions`` that the Trio shell
(``gap_repair.GapRepair``) carries out: emit these batches in this order, start these repairs, cancel those.

Live ticks of a symbol wait behind its hole (up to ``max_held``) while other symbols flow on. A symbol without
a persisted id starts at its first live trade, unless a connection was lost after it was subscribed and before
that trade arrived: then the trades since its subscription are looked up first (an anchoring ``Repair``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import attrs

from app.clock import wall_clock_ms
from app.ingest.sequence import TradeSequence
from app.ingest.status import IngestStatus
from app.model import Gap, Tick

log = logging.getLogger(__name__)

# Live ticks held behind one hole before the hole is given up (bounds memory while REST is slow).
DEFAULT_MAX_HELD = 200_000
# Anchoring looks this much further back than the subscription (trade times are the exchange's, and our
# estimate of its clock is off by the network latency).
CLOCK_SKEW_MS = 1000


@attrs.define(eq=False)
class Repair:
    """Trades of ``symbol`` to fetch over REST: ids ``first_id``..``last_id``; or, when anchoring, the trades
    before ``first_id`` since the symbol was subscribed (``first_id`` then moves down to the first found)."""

    symbol: str
    first_id: int
    last_id: int
    # Anchoring: the wall-clock ms (ours) of the subscription, and the exchange's clock minus ours if known
    # (else the repair task asks the exchange for its time).
    subscribed_at_ms: int | None = None
    exchange_offset_ms: int | None = None
    # Trades this repair supplied that were still missing when they arrived.
    filled: int = 0

    @property
    def anchoring(self) -> bool:
        return self.subscribed_at_ms is not None


@attrs.define
class Decisions:
    """What the shell does next: start repairs, cancel repairs, then emit ``ready`` batch by batch, in order."""

    ready: list[list[Tick]] = attrs.Factory(list)
    start: list[Repair] = attrs.Factory(list)
    cancel: list[Repair] = attrs.Factory(list)

    def extend(self, later: Decisions) -> None:
        """Adds decisions taken after these (their batches go out after these batches)."""
        self.ready.extend(later.ready)
        self.start.extend(later.start)
        self.cancel.extend(later.cancel)


class TradeSequencer:
    """One ``TradeSequence`` per tracked symbol and at most one ``Repair`` per symbol."""

    def __init__(
        self,
        status: IngestStatus,
        *,
        can_repair: bool,
        max_backfill_trades: int,
        max_held: int = DEFAULT_MAX_HELD,
        wall_ms: Callable[[], int] = wall_clock_ms,
    ) -> None:
        self._status = status
        self._can_repair = can_repair
        self._max_backfill = max_backfill_trades
        self._max_held = max_held
        self._wall_ms = wall_ms
        self.sequences: dict[str, TradeSequence] = {}
        self.repairs: dict[str, Repair] = {}
        # Fresh symbols (no next id yet): our wall-clock ms at the subscription, and the disconnect count then.
        self._fresh: dict[str, tuple[int, int]] = {}
        # The exchange's clock minus ours, from live event times (the largest seen: lag only makes it smaller).
        self.exchange_offset_ms: int | None = None

    # --- the symbol set ---

    def track(self, symbol: str, last_trade_id: int | None = None) -> None:
        """Accept ticks of ``symbol`` from now on; ``last_trade_id`` (persisted) makes the next id due known."""
        if symbol in self.sequences:
            return
        status = self._status.symbol(symbol)
        status.subscribed = True
        if last_trade_id is not None and status.last_trade_id is None:
            status.last_trade_id = last_trade_id
        next_id = None if last_trade_id is None else last_trade_id + 1
        self.sequences[symbol] = TradeSequence(symbol, next_id, status, unverified_resume_id=last_trade_id)
        if next_id is None:
            self._fresh[symbol] = (self._wall_ms(), self._status.disconnects)

    def forget(self, symbol: str) -> Decisions:
        """Stop sequencing ``symbol`` (unsubscribed): its held ticks are dropped, its repair cancelled."""
        decisions = Decisions()
        sequence = self.sequences.pop(symbol, None)
        self._fresh.pop(symbol, None)
        if sequence is None:
            return decisions
        sequence.status.subscribed = False
        sequence.status.backfilling = False
        repair = self.repairs.pop(symbol, None)
        if repair is not None:
            decisions.cancel.append(repair)
        if sequence.held:
            log.info("unsubscribed symbol=%s dropped_held=%d", symbol, len(sequence.held))
        return decisions

    # --- live ticks: the hot path ---

    def accept(self, ticks: list[Tick], now: float) -> Decisions:
        """Live ticks from one socket read (``now``: the monotonic time of the read): each is ready now, held
        behind a hole, or dropped as a duplicate."""
        decisions = Decisions()
        ready = decisions.ready
        sequences = self.sequences
        due: list[Tick] = []
        for tick in ticks:
            sequence = sequences.get(tick.symbol)
            if sequence is None:
                self._status.ticks_ignored += 1
                continue
            status = sequence.status
            status.ticks_received += 1
            status.last_tick_at = now
            trade_id = tick.trade_id
            if trade_id == sequence.next_id and not sequence.held:
                # The hot path: the tick due, nothing held.
                sequence.next_id = trade_id + 1
                status.ticks_emitted += 1
                status.last_trade_id = trade_id
                due.append(tick)
                continue
            # What this tick releases goes out after the ticks already due.
            if due:
                ready.append(due)
                due = []
            if sequence.next_id is None:
                self._start_stream(sequence, tick, decisions)
            elif sequence.unverified_resume_id is not None:
                self._verify_resume(sequence, tick)
            self._release(sequence, sequence.offer(tick), decisions)
            if sequence.held:
                self._check_hole(sequence, decisions)
        if due:
            ready.append(due)
        if ticks:
            offset = ticks[-1].event_time_ms - self._wall_ms()
            if self.exchange_offset_ms is None or offset > self.exchange_offset_ms:
                self.exchange_offset_ms = offset
        return decisions

    def _verify_resume(self, sequence: TradeSequence, first: Tick) -> None:
        """The first live trade after resuming: the exchange's ids must not lie behind the stored ones."""
        stored_id = sequence.unverified_resume_id
        sequence.unverified_resume_id = None
        # Against the stored id, not the next id due: a backfill may have gone past this live trade already.
        if stored_id is None or first.trade_id >= stored_id:
            return
        # Dropping everything as a "duplicate" until the exchange catches up would be silent data loss.
        log.error(
            "stored trades are ahead of the exchange symbol=%s stored_last_id=%d live_id=%d: another venue's "
            "database (testnet vs live?); streaming from the live id",
            sequence.symbol, stored_id, first.trade_id,
        )
        self._status.resume_mismatches += 1
        sequence.next_id = first.trade_id

    def _start_stream(self, sequence: TradeSequence, first: Tick, decisions: Decisions) -> None:
        """The first trade of a fresh symbol: anchor it if a connection was lost since the subscription."""
        fresh = self._fresh.pop(sequence.symbol, None)
        if sequence.anchoring or fresh is None or not self._can_repair:
            return
        subscribed_at_ms, disconnects = fresh
        if self._status.disconnects == disconnects:
            return  # nothing can have been missed: the stream starts here
        self._anchor_from(sequence, first.trade_id, subscribed_at_ms, decisions)

    # --- the exchange's last trade ids (24hr ticker) ---

    def wants_last_id(self, symbol: str, disconnects: int) -> bool:
        """Whether asking the exchange's last trade id of ``symbol`` can show a hole: it has a next id due, or
        it is fresh and a connection was lost (``disconnects`` is the count now) since it was subscribed."""
        sequence = self.sequences.get(symbol)
        if sequence is None:
            return False
        return sequence.next_id is not None or self._missed_since_subscription(symbol, disconnects)

    def behind(self, sequences: dict[str, TradeSequence], last_ids: dict[str, int]) -> dict[str, TradeSequence]:
        """The sequences whose symbol's exchange last id lies at or beyond their next id due."""
        return {
            symbol: sequence for symbol, sequence in sequences.items()
            if last_ids.get(symbol, -1) >= 0
            and (sequence.next_id is None or sequence.next_id <= last_ids[symbol])
        }

    def apply_last_id(self, sequence: TradeSequence, last_id: int) -> Decisions:
        """The exchange's last trade id of the sequence's symbol is ``last_id``: anything up to it not emitted
        yet is a hole to repair (or, for a symbol without a first trade yet, to anchor)."""
        decisions = Decisions()
        if last_id < 0 or self.sequences.get(sequence.symbol) is not sequence:
            return decisions  # no trade in the last 24 hours, or forgotten meanwhile
        if sequence.next_id is None:
            fresh = self._fresh.get(sequence.symbol)
            if sequence.anchoring or fresh is None or not self._missed_since_subscription(
                sequence.symbol, self._status.disconnects
            ):
                return decisions
            del self._fresh[sequence.symbol]
            # As if the next trade had arrived live: trades since the subscription up to ``last_id`` are found.
            self._anchor_from(sequence, last_id + 1, fresh[0], decisions)
            return decisions
        if sequence.known_last_id is None or last_id > sequence.known_last_id:
            sequence.known_last_id = last_id
        self._check_hole(sequence, decisions)
        return decisions

    def _missed_since_subscription(self, symbol: str, disconnects: int) -> bool:
        fresh = self._fresh.get(symbol)
        return fresh is not None and fresh[1] != disconnects

    # --- holes and repairs ---

    def _anchor_from(self, sequence: TradeSequence, first_id: int, subscribed_at_ms: int, decisions: Decisions) -> None:
        """Finds the trades of a fresh symbol since its subscription up to ``first_id`` - 1."""
        sequence.anchoring = True
        repair = Repair(sequence.symbol, first_id, first_id - 1, subscribed_at_ms, self.exchange_offset_ms)
        self.repairs[sequence.symbol] = repair
        sequence.status.backfilling = True
        log.info("anchoring symbol=%s before_id=%d", sequence.symbol, first_id)
        decisions.start.append(repair)

    def _check_hole(self, sequence: TradeSequence, decisions: Decisions) -> None:
        """Start a repair for the sequence's hole unless one runs; give the hole up if too much is held."""
        symbol = sequence.symbol
        status = sequence.status
        repair = self.repairs.get(symbol)
        if repair is not None:
            if len(sequence.held) <= self._max_held:
                return
            del self.repairs[symbol]
            decisions.cancel.append(repair)
            status.backfilling = False
            if sequence.anchoring:
                log.warning("anchoring given up symbol=%s: too many live trades held", symbol)
                self._release(sequence, sequence.anchor(sequence.held[0].trade_id), decisions)
            self._give_up(sequence, f"more than {self._max_held} live trades waited for the backfill", decisions)
        while (hole := sequence.hole()) is not None:
            first, last = hole
            status.gaps_found += 1
            if not self._can_repair:
                self._give_up(sequence, "no REST endpoint to backfill from", decisions)
                continue
            if last - first + 1 > self._max_backfill:
                keep_from = last - self._max_backfill + 1
                self._record_gap(sequence, first, keep_from - 1, f"more than MAX_BACKFILL_TRADES={self._max_backfill}")
                sequence.advance_to(keep_from)  # releases nothing: the first held tick is above ``last``
                first = keep_from
            repair = Repair(symbol, first, last)
            self.repairs[symbol] = repair
            status.backfilling = True
            log.info("gap found symbol=%s first_id=%d last_id=%d", symbol, first, last)
            decisions.start.append(repair)
            return

    def is_current(self, repair: Repair) -> bool:
        """False for a repair that was cancelled or whose symbol was unsubscribed meanwhile."""
        return self.repairs.get(repair.symbol) is repair

    def backfilled(self, repair: Repair, page: Iterable[Tick]) -> Decisions:
        """A page of trades the repair fetched, ascending."""
        decisions = Decisions()
        if not self.is_current(repair):
            return decisions
        self._backfilled(repair, page, decisions)
        return decisions

    def _backfilled(self, repair: Repair, page: Iterable[Tick], decisions: Decisions) -> None:
        sequence = self.sequences[repair.symbol]
        filled = 0
        for tick in page:
            ready = sequence.offer(tick)
            if ready and ready[0] is tick:
                filled += 1
            self._release(sequence, ready, decisions)
        repair.filled += filled
        sequence.status.trades_backfilled += filled
        if len(sequence.held) > self._max_held:
            self._check_hole(sequence, decisions)

    def anchored(self, repair: Repair, first_id: int, pages: list[list[Tick]], error: str | None) -> Decisions:
        """The anchoring repair found the stream's start at ``first_id`` and fetched ``pages`` (newest first)."""
        decisions = Decisions()
        if not self.is_current(repair):
            return decisions
        sequence = self.sequences[repair.symbol]
        repair.first_id = first_id
        self._release(sequence, sequence.anchor(first_id), decisions)
        for page in reversed(pages):
            self._backfilled(repair, page, decisions)
        if self.is_current(repair):
            self._repair_ended(repair, error, decisions)
        return decisions

    def repair_ended(self, repair: Repair, error: str | None) -> Decisions:
        """The repair fetched all REST would give (``error`` None) or failed with ``error``."""
        decisions = Decisions()
        if self.is_current(repair):
            self._repair_ended(repair, error, decisions)
        return decisions

    def _repair_ended(self, repair: Repair, error: str | None, decisions: Decisions) -> None:
        sequence = self.sequences[repair.symbol]
        del self.repairs[repair.symbol]
        sequence.status.backfilling = False
        hole = sequence.hole()
        if hole is not None and hole[0] <= repair.last_id:
            # REST did not serve part of the range it was asked for.
            last_given_up = min(hole[1], repair.last_id)
            reason = error or "trades not served by REST (too old or unknown)"
            self._record_gap(sequence, hole[0], last_given_up, reason)
            self._release(sequence, sequence.advance_to(last_given_up + 1), decisions)
        elif error is None and repair.filled:
            sequence.status.gaps_repaired += 1
            log.info("gap repaired symbol=%s first_id=%d last_id=%d", repair.symbol, repair.first_id, repair.last_id)
        # Live ticks held meanwhile may sit behind another hole.
        self._check_hole(sequence, decisions)

    def close_out(self, sequence: TradeSequence) -> Decisions:
        """Before ``sequence`` is forgotten: whatever is still missing is given up (its repair cancelled)."""
        decisions = Decisions()
        if self.sequences.get(sequence.symbol) is not sequence:
            return decisions
        repair = self.repairs.pop(sequence.symbol, None)
        if repair is not None:
            decisions.cancel.append(repair)
            sequence.status.backfilling = False
        if sequence.anchoring:
            log.warning("unsubscribed before its first trades were checked symbol=%s", sequence.symbol)
            return decisions
        while sequence.hole() is not None:
            self._give_up(sequence, "unsubscribed before the missed trades were fetched", decisions)
        return decisions

    def _give_up(self, sequence: TradeSequence, reason: str, decisions: Decisions) -> None:
        hole = sequence.hole()
        if hole is None:
            return
        self._record_gap(sequence, hole[0], hole[1], reason)
        self._release(sequence, sequence.advance_to(hole[1] + 1), decisions)

    def _record_gap(self, sequence: TradeSequence, first: int, last: int, reason: str) -> None:
        gap = Gap(symbol=sequence.symbol, first_trade_id=first, last_trade_id=last, reason=reason,
                  detected_at_ms=self._wall_ms())
        sequence.status.record_gap(gap)
        log.warning("unrepaired gap symbol=%s first_id=%d last_id=%d missing=%d reason=%s",
                    gap.symbol, first, last, gap.missing_count, reason)

    @staticmethod
    def _release(sequence: TradeSequence, ready: list[Tick], decisions: Decisions) -> None:
        if not ready:
            return
        status = sequence.status
        status.ticks_emitted += len(ready)
        status.last_trade_id = ready[-1].trade_id
        decisions.ready.append(ready)
