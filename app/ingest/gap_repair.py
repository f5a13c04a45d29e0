"""The sequencer: every trade of every subscribed symbol exactly once, in id order, gaps repaired over REST.

Connections hand the parsed ticks of each socket read to ``TradeSequencer.accept`` (no task hop on the hot path). The
per-symbol ``TradeSequence`` decides synchronously what may go out, and the ``Emitter`` sends it in the order
decided, so ordering holds whichever task decided. A hole (after a reconnect, a stall, a dropped frame, or at
start-up from a persisted trade id) starts one repair task for that symbol, which fetches the missing ids over
REST and offers them like live ticks; live ticks of that symbol wait behind the hole meanwhile, other symbols
flow on. What cannot be repaired is given up explicitly: a ``Gap`` in the status, a WARNING, counters.

A hole is seen either when a later live trade arrives or, for symbols that go quiet, from the exchange's last
trade id: whenever a connection comes up (``check_last_ids``) and before a symbol is unsubscribed
(``close_out``) the 24hr ticker says where each symbol stands, and ids up to it not emitted yet are repaired
the same way.
"""

from __future__ import annotations

import logging
import time

import attrs
import trio

from app.ingest.emitter import Emitter
from app.ingest.rest import TRADES_PAGE_LIMIT, BinanceRest, RestError
from app.ingest.sequence import TradeSequence
from app.ingest.status import IngestStatus
from app.model import Gap, Tick

log = logging.getLogger(__name__)

# Live ticks held behind one hole before the hole is given up (bounds memory while REST is slow).
DEFAULT_MAX_HELD = 200_000
# Unsubscribing waits this long for the symbol's missed trades to be fetched; what is still missing then is
# reported as a gap.
CLOSE_OUT_TIMEOUT_SECONDS = 10.0
# The exchange's last trade id counts trades still on their way over the socket: a symbol that looks behind
# it is given this long to catch up live before the rest is fetched (saves a REST page per busy symbol).
LAST_ID_SETTLE_SECONDS = 1.0
# Trade times come from the exchange's clock: look this much further back when anchoring a new symbol.
CLOCK_SKEW_MS = 1000


@attrs.define(eq=False)
class RepairJob:
    sequence: TradeSequence
    first_id: int
    last_id: int
    scope: trio.CancelScope = attrs.Factory(trio.CancelScope)
    # Set when the task ends, whichever way.
    done: trio.Event = attrs.Factory(trio.Event)
    # Trades this job supplied that were still missing when they arrived.
    filled: int = 0


class TradeSequencer:
    """Owns the per-symbol sequences. ``run`` hosts the repair tasks; ``accept`` is called for every live tick."""

    def __init__(
        self,
        status: IngestStatus,
        rest: BinanceRest | None,
        *,
        max_backfill_trades: int,
        max_held: int = DEFAULT_MAX_HELD,
        close_out_timeout: float = CLOSE_OUT_TIMEOUT_SECONDS,
        last_id_settle: float = LAST_ID_SETTLE_SECONDS,
    ) -> None:
        self._status = status
        self._rest = rest
        self._max_backfill = max_backfill_trades
        self._max_held = max_held
        self._close_out_timeout = close_out_timeout
        self._last_id_settle = last_id_settle
        self.sequences: dict[str, TradeSequence] = {}
        self._repairs: dict[str, RepairJob] = {}
        # Fresh symbols (no next id yet): wall-clock ms of the subscription, and the disconnect count then.
        self._fresh: dict[str, tuple[int, int]] = {}
        self._nursery: trio.Nursery | None = None
        self._emitter: Emitter | None = None

    def track(self, symbol: str, last_trade_id: int | None = None) -> None:
        """Accept ticks of ``symbol`` from now on; ``last_trade_id`` (persisted) makes the next id due known."""
        if symbol in self.sequences:
            return
        status = self._status.symbol(symbol)
        status.subscribed = True
        if last_trade_id is not None and status.last_trade_id is None:
            status.last_trade_id = last_trade_id
        next_id = None if last_trade_id is None else last_trade_id + 1
        self.sequences[symbol] = TradeSequence(symbol, next_id, status, resume_unverified=next_id is not None)
        if next_id is None:
            # Without a persisted id the stream starts at the first trade received, unless a connection is
            # lost before it arrives: then the trades since now are looked up (``_anchor``).
            self._fresh[symbol] = (_now_ms() - CLOCK_SKEW_MS, self._status.disconnects)

    def forget(self, symbol: str) -> None:
        """Stop sequencing ``symbol`` (unsubscribed): its in-flight ticks are dropped, its repair cancelled."""
        sequence = self.sequences.pop(symbol, None)
        self._fresh.pop(symbol, None)
        if sequence is None:
            return
        sequence.status.subscribed = False
        sequence.status.backfilling = False
        job = self._repairs.pop(symbol, None)
        if job is not None:
            job.scope.cancel()
        if sequence.held:
            log.info("unsubscribed symbol=%s dropped_held=%d", symbol, len(sequence.held))

    def check_last_ids(self, symbols: list[str]) -> None:
        """A connection carrying ``symbols`` is up: look for trades missed before it now (one cheap 24hr-ticker
        request per 20 symbols), instead of when each symbol's next trade arrives, which may be never."""
        if self._rest is None or self._nursery is None:
            return
        self._nursery.start_soon(self._check_last_ids, symbols, self._rest)

    async def close_out(self, symbol: str) -> None:
        """Before ``symbol`` is forgotten: its trades up to the exchange's last id now are emitted (fetched over
        REST if missed), or, if that does not finish within ``close_out_timeout``, reported as a gap."""
        sequence = self.sequences.get(symbol)
        rest = self._rest
        if sequence is None or rest is None:
            return
        with trio.move_on_after(self._close_out_timeout):
            try:
                self._status.last_id_checks += 1
                last_ids = await rest.last_trade_ids([symbol])
            except RestError as error:
                self._status.last_id_checks_failed += 1
                log.warning("last trade id unknown at unsubscribe symbol=%s error=%s", symbol, error)
            else:
                await self._apply_last_ids({symbol: sequence}, last_ids)
            while self.sequences.get(symbol) is sequence and (job := self._repairs.get(symbol)) is not None:
                await job.done.wait()
        if self.sequences.get(symbol) is not sequence:
            return
        job = self._repairs.pop(symbol, None)
        if job is not None:
            job.scope.cancel()
            sequence.status.backfilling = False
        if sequence.anchoring:
            log.warning("unsubscribed before its first trades were checked symbol=%s", symbol)
            return
        while sequence.hole() is not None:
            self._give_up(sequence, "unsubscribed before the missed trades were fetched")
        await self._flush()

    async def _check_last_ids(self, symbols: list[str], rest: BinanceRest) -> None:
        disconnects = self._status.disconnects
        wanted = {
            symbol: sequence for symbol in symbols
            if (sequence := self.sequences.get(symbol)) is not None
            and (sequence.next_id is not None or self._missed_since_subscription(symbol, disconnects))
        }
        if not wanted:
            return
        self._status.last_id_checks += 1
        try:
            last_ids = await rest.last_trade_ids(list(wanted))
        except RestError as error:
            # Not silent: holes still show with each symbol's next live trade, and this is counted.
            self._status.last_id_checks_failed += 1
            log.warning("last trade ids unknown after connecting symbols=%d error=%s", len(wanted), error)
            return
        await self._apply_last_ids(wanted, last_ids)

    async def _apply_last_ids(self, sequences: dict[str, TradeSequence], last_ids: dict[str, int]) -> None:
        behind = {
            symbol: sequence for symbol, sequence in sequences.items()
            if last_ids.get(symbol, -1) >= 0
            and (sequence.next_id is None or sequence.next_id <= last_ids[symbol])
        }
        if not behind:
            return
        await trio.sleep(self._last_id_settle)
        for symbol, sequence in behind.items():
            if self.sequences.get(symbol) is sequence:
                self._apply_last_id(sequence, last_ids[symbol])
        await self._flush()

    def _missed_since_subscription(self, symbol: str, disconnects: int) -> bool:
        fresh = self._fresh.get(symbol)
        return fresh is not None and fresh[1] != disconnects

    def _apply_last_id(self, sequence: TradeSequence, last_id: int) -> None:
        """The exchange's last trade id of the sequence's symbol is ``last_id``: anything up to it not emitted
        yet is a hole to repair (or, for a symbol without a first trade yet, to anchor)."""
        if last_id < 0:
            return  # no trade in the last 24 hours
        if sequence.next_id is None:
            fresh = self._fresh.get(sequence.symbol)
            if sequence.anchoring or fresh is None or not self._missed_since_subscription(
                sequence.symbol, self._status.disconnects
            ):
                return
            del self._fresh[sequence.symbol]
            # As if the next trade had arrived live: trades since the subscription up to ``last_id`` are found.
            self._anchor_from(sequence, last_id + 1, fresh[0])
            return
        if sequence.known_last_id is None or last_id > sequence.known_last_id:
            sequence.known_last_id = last_id
        self._check_hole(sequence)

    async def _flush(self) -> None:
        assert self._emitter is not None
        await self._emitter.flush()

    async def run(
        self,
        ticks: trio.MemorySendChannel[list[Tick]],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Emits into ``ticks`` and hosts the repair tasks until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._emitter = Emitter(ticks)
            task_status.started()
            await trio.sleep_forever()

    async def accept(self, ticks: list[Tick]) -> None:
        """Live ticks from a connection (one socket read): each is emitted now, held behind a hole, or dropped
        as a duplicate; the ones due go out as one batch."""
        emitter = self._emitter
        assert emitter is not None, "TradeSequencer.run is not running"
        sequences = self.sequences
        now = trio.current_time()
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
            emitter.enqueue(due)
            due = []
            if sequence.next_id is None:
                self._start_stream(sequence, tick)
            elif sequence.resume_unverified:
                self._verify_resume(sequence, tick)
            self._release(sequence, sequence.offer(tick))
            if sequence.held:
                self._check_hole(sequence)
        if due:
            await emitter.emit(due)
        else:
            await emitter.flush()

    # --- synchronous decisions (no await: ordering is decided here) ---

    def _release(self, sequence: TradeSequence, ready: list[Tick]) -> None:
        if not ready:
            return
        status = sequence.status
        status.ticks_emitted += len(ready)
        status.last_trade_id = ready[-1].trade_id
        assert self._emitter is not None
        self._emitter.enqueue(ready)

    def _verify_resume(self, sequence: TradeSequence, first: Tick) -> None:
        """The first live trade after resuming: the exchange's ids must not lie behind the stored ones."""
        sequence.resume_unverified = False
        assert sequence.next_id is not None
        if first.trade_id >= sequence.next_id - 1:
            return
        # Dropping everything as a "duplicate" until the exchange catches up would be silent data loss.
        log.error(
            "stored trades are ahead of the exchange symbol=%s stored_last_id=%d live_id=%d: another venue's "
            "database (testnet vs live?); streaming from the live id",
            sequence.symbol, sequence.next_id - 1, first.trade_id,
        )
        self._status.resume_mismatches += 1
        sequence.next_id = first.trade_id

    def _start_stream(self, sequence: TradeSequence, first: Tick) -> None:
        """The first trade of a fresh symbol: anchor it if a connection was lost since the subscription."""
        fresh = self._fresh.pop(sequence.symbol, None)
        if sequence.anchoring or fresh is None or self._rest is None:
            return
        since_ms, disconnects = fresh
        if self._status.disconnects == disconnects:
            return  # nothing can have been missed: the stream starts here
        self._anchor_from(sequence, first.trade_id, since_ms)

    def _anchor_from(self, sequence: TradeSequence, first_id: int, since_ms: int) -> None:
        """Finds the trades of a fresh symbol from ``since_ms`` (its subscription) up to ``first_id`` - 1."""
        assert self._rest is not None and self._nursery is not None
        sequence.anchoring = True
        job = RepairJob(sequence, first_id, first_id - 1)
        self._repairs[sequence.symbol] = job
        sequence.status.backfilling = True
        log.info("anchoring symbol=%s before_id=%d", sequence.symbol, first_id)
        self._nursery.start_soon(self._anchor, job, since_ms, self._rest)

    def _check_hole(self, sequence: TradeSequence) -> None:
        """Start a repair for the sequence's hole unless one runs; give the hole up if too much is held."""
        symbol = sequence.symbol
        status = sequence.status
        job = self._repairs.get(symbol)
        if job is not None:
            if len(sequence.held) <= self._max_held:
                return
            del self._repairs[symbol]
            job.scope.cancel()
            status.backfilling = False
            if sequence.anchoring:
                log.warning("anchoring given up symbol=%s: too many live trades held", symbol)
                self._release(sequence, sequence.anchor(sequence.held[0].trade_id))
            self._give_up(sequence, f"more than {self._max_held} live trades waited for the backfill")
        while (hole := sequence.hole()) is not None:
            first, last = hole
            status.gaps_found += 1
            if self._rest is None:
                self._give_up(sequence, "no REST endpoint to backfill from")
                continue
            if last - first + 1 > self._max_backfill:
                keep_from = last - self._max_backfill + 1
                self._record_gap(sequence, first, keep_from - 1, f"more than MAX_BACKFILL_TRADES={self._max_backfill}")
                sequence.advance_to(keep_from)  # releases nothing: the first held tick is above ``last``
                first = keep_from
            job = RepairJob(sequence, first, last)
            self._repairs[symbol] = job
            status.backfilling = True
            log.info("gap found symbol=%s first_id=%d last_id=%d", symbol, first, last)
            assert self._nursery is not None
            self._nursery.start_soon(self._repair, job, self._rest)
            return

    def _give_up(self, sequence: TradeSequence, reason: str) -> None:
        hole = sequence.hole()
        if hole is None:
            return
        self._record_gap(sequence, hole[0], hole[1], reason)
        self._release(sequence, sequence.advance_to(hole[1] + 1))

    def _record_gap(self, sequence: TradeSequence, first: int, last: int, reason: str) -> None:
        gap = Gap(symbol=sequence.symbol, first_trade_id=first, last_trade_id=last, reason=reason,
                  detected_at_ms=_now_ms())
        sequence.status.record_gap(gap)
        log.warning("unrepaired gap symbol=%s first_id=%d last_id=%d missing=%d reason=%s",
                    gap.symbol, first, last, gap.missing_count, reason)

    def _is_current(self, job: RepairJob) -> bool:
        """False for a repair that was cancelled or whose symbol was unsubscribed meanwhile."""
        return self._repairs.get(job.sequence.symbol) is job

    def _backfilled(self, job: RepairJob, page: list[Tick]) -> None:
        sequence = job.sequence
        filled = 0
        for tick in page:
            ready = sequence.offer(tick)
            if ready and ready[0] is tick:
                filled += 1
            self._release(sequence, ready)
        job.filled += filled
        sequence.status.trades_backfilled += filled
        if len(sequence.held) > self._max_held:
            self._check_hole(sequence)

    def _repair_ended(self, job: RepairJob, error: str | None) -> None:
        sequence = job.sequence
        del self._repairs[sequence.symbol]
        sequence.status.backfilling = False
        hole = sequence.hole()
        if hole is not None and hole[0] <= job.last_id:
            # REST did not serve part of the range it was asked for.
            last_given_up = min(hole[1], job.last_id)
            reason = error or "trades not served by REST (too old or unknown)"
            self._record_gap(sequence, hole[0], last_given_up, reason)
            self._release(sequence, sequence.advance_to(last_given_up + 1))
        elif error is None and job.filled:
            sequence.status.gaps_repaired += 1
            log.info("gap repaired symbol=%s first_id=%d last_id=%d", sequence.symbol, job.first_id, job.last_id)
        # Live ticks held meanwhile may sit behind another hole.
        self._check_hole(sequence)

    # --- the repair tasks ---

    async def _repair(self, job: RepairJob, rest: BinanceRest) -> None:
        try:
            await self._repair_range(job, rest)
        finally:
            job.done.set()

    async def _repair_range(self, job: RepairJob, rest: BinanceRest) -> None:
        symbol = job.sequence.symbol
        error: str | None = None
        assert self._emitter is not None
        with job.scope:
            next_id = job.first_id
            try:
                while next_id <= job.last_id:
                    limit = min(TRADES_PAGE_LIMIT, job.last_id - next_id + 1)
                    page = await rest.historical_trades(symbol, next_id, limit)
                    page = [tick for tick in page if tick.trade_id <= job.last_id]
                    if not page or page[-1].trade_id < next_id:
                        break  # REST has nothing from next_id on: the range ends here
                    if not self._is_current(job):
                        return
                    self._backfilled(job, page)
                    await self._emitter.flush()
                    next_id = page[-1].trade_id + 1
            except RestError as rest_error:
                error = f"backfill failed: {rest_error}"
                log.warning("backfill failed symbol=%s from_id=%d error=%s", symbol, next_id, rest_error)
            if self._is_current(job):
                self._repair_ended(job, error)
                await self._emitter.flush()

    async def _anchor(self, job: RepairJob, since_ms: int, rest: BinanceRest) -> None:
        try:
            await self._anchor_range(job, since_ms, rest)
        finally:
            job.done.set()

    async def _anchor_range(self, job: RepairJob, since_ms: int, rest: BinanceRest) -> None:
        """Pages back from the first live trade to the first trade at or after the subscription time."""
        symbol = job.sequence.symbol
        before_id = job.first_id
        first_id = before_id
        pages: list[list[Tick]] = []
        fetched = 0
        error: str | None = None
        assert self._emitter is not None
        with job.scope:
            try:
                while before_id > 0 and fetched < self._max_backfill:
                    from_id = max(0, before_id - TRADES_PAGE_LIMIT)
                    page = await rest.historical_trades(symbol, from_id, before_id - from_id)
                    page = [tick for tick in page if tick.trade_id < before_id]
                    newer = [tick for tick in page if tick.trade_time_ms >= since_ms]
                    if not newer:
                        break
                    pages.append(newer)
                    first_id = newer[0].trade_id
                    fetched += len(page)
                    if len(newer) < len(page) or page[0].trade_id > from_id:
                        break  # the subscription time lies within this page, or REST has nothing older
                    before_id = from_id
            except RestError as rest_error:
                error = f"trades since the subscription could not be checked: {rest_error}"
                log.warning("anchoring failed symbol=%s error=%s", symbol, rest_error)
            if not self._is_current(job):
                return
            job.first_id = first_id
            self._release(job.sequence, job.sequence.anchor(first_id))
            for page in reversed(pages):
                self._backfilled(job, page)
            if self._is_current(job):
                self._repair_ended(job, error)
            await self._emitter.flush()


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
