"""Gap repair: the Trio shell around the sequencer's decisions, and the REST tasks that fetch missed trades.

Connections send the parsed ticks of each socket read on one memory channel; ``GapRepair.sequence_live`` takes
them batch by batch, the pure ``TradeSequencer`` decides what goes out, and the ``Emitter`` sends it in the order
decided, whichever task decided. A hole starts one repair task for that symbol, which fetches the missing ids
over REST (``fetch_page``; ``fetch_since`` for a fresh symbol's trades since its subscription) and hands the
pages back to the sequencer; what REST does not serve is given up as a ``Gap`` by the sequencer.

A hole is seen either when a later live trade arrives or, for symbols that go quiet, from the exchange's last
trade id: whenever a connection comes up (``check_last_ids``) and before a symbol is unsubscribed
(``close_out``) the 24hr ticker says where each symbol stands, and ids up to it not emitted yet are repaired
the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import attrs
import trio

from app.backoff import Backoff, BackoffPolicy
from app.clock import wall_clock_ms
from app.ingest.emitter import Emitter
from app.ingest.rest import TRADES_PAGE_LIMIT, BinanceRest, RestError
from app.ingest.sequence import TradeSequence
from app.ingest.sequencer import CLOCK_SKEW_MS, DEFAULT_MAX_HELD, Decisions, Repair, TradeSequencer
from app.ingest.status import IngestStatus
from app.model import Tick

log = logging.getLogger(__name__)

# Unsubscribing waits this long for the symbol's missed trades to be fetched; what is still missing then is
# reported as a gap.
CLOSE_OUT_TIMEOUT_SECONDS = 10.0
# The exchange's last trade id counts trades still on their way over the socket: a symbol that looks behind
# it is given this long to catch up live before the rest is fetched (saves a REST page per busy symbol).
LAST_ID_SETTLE_SECONDS = 1.0
# A 200 with no trades where trades exist (REST a moment behind the stream): asked again after 0.5, 1 and 2 s.
EMPTY_PAGE_RETRY = BackoffPolicy(start=0.5, cap=2.0, jitter=False, max_retries=3)


@attrs.define(eq=False)
class RepairTask:
    scope: trio.CancelScope = attrs.Factory(trio.CancelScope)
    # Set when the task ends, whichever way.
    done: trio.Event = attrs.Factory(trio.Event)


class GapRepair:
    """Sequences live ticks and repairs holes over REST; its repair tasks run in ``nursery``.

    ``sequence_live`` is the task that takes the connections' batches; ``track``, ``forget``, ``close_out`` and
    ``check_last_ids`` are called by the stream client and the subscription manager."""

    def __init__(
        self,
        status: IngestStatus,
        rest: BinanceRest | None,
        ticks: trio.MemorySendChannel[list[Tick]],
        nursery: trio.Nursery,
        *,
        max_backfill_trades: int,
        max_held: int = DEFAULT_MAX_HELD,
        close_out_timeout: float = CLOSE_OUT_TIMEOUT_SECONDS,
        last_id_settle: float = LAST_ID_SETTLE_SECONDS,
        empty_page_retry: BackoffPolicy = EMPTY_PAGE_RETRY,
        wall_ms: Callable[[], int] = wall_clock_ms,
    ) -> None:
        self._status = status
        self._rest = rest
        self._emitter = Emitter(ticks)
        self._nursery = nursery
        self._close_out_timeout = close_out_timeout
        self._last_id_settle = last_id_settle
        self._empty_page_retry = empty_page_retry
        self._max_backfill = max_backfill_trades
        self._wall_ms = wall_ms
        self.sequencer = TradeSequencer(
            status, can_repair=rest is not None, max_backfill_trades=max_backfill_trades, max_held=max_held,
            wall_ms=wall_ms,
        )
        self._tasks: dict[Repair, RepairTask] = {}

    def track(self, symbol: str, last_trade_id: int | None = None) -> None:
        """Accept ticks of ``symbol`` from now on; ``last_trade_id`` (persisted) makes the next id due known."""
        self.sequencer.track(symbol, last_trade_id)

    def forget(self, symbol: str) -> None:
        """Stop sequencing ``symbol`` (unsubscribed): its in-flight ticks are dropped, its repair cancelled."""
        self._start_and_cancel(self.sequencer.forget(symbol))

    async def sequence_live(self, live_ticks: trio.MemoryReceiveChannel[list[Tick]]) -> None:
        """The task for live ticks (one batch per socket read, from every connection) until the channel ends:
        each batch's ticks due go out in order, waiting while the output is full."""
        sequencer = self.sequencer
        carry_out = self._carry_out
        current_time = trio.current_time
        async with live_ticks:
            async for ticks in live_ticks:
                await carry_out(sequencer.accept(ticks, current_time()))

    def check_last_ids(self, symbols: list[str]) -> None:
        """A connection carrying ``symbols`` is up: look for trades missed before it now (one cheap 24hr-ticker
        request per 20 symbols), instead of when each symbol's next trade arrives, which may be never."""
        if self._rest is not None:
            self._nursery.start_soon(self._check_last_ids, symbols, self._rest)

    async def close_out(self, symbol: str) -> None:
        """Before ``symbol`` is forgotten: its trades up to the exchange's last id now are emitted (fetched over
        REST if missed), or, if that does not finish within ``close_out_timeout``, reported as a gap."""
        sequencer = self.sequencer
        sequence = sequencer.sequences.get(symbol)
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
            while sequencer.sequences.get(symbol) is sequence and (repair := sequencer.repairs.get(symbol)):
                await self._tasks[repair].done.wait()
        await self._carry_out(sequencer.close_out(sequence))

    # --- carrying out decisions ---

    def _start_and_cancel(self, decisions: Decisions) -> None:
        rest = self._rest
        for repair in decisions.start:
            assert rest is not None  # the sequencer starts repairs only when it can repair
            task = self._tasks[repair] = RepairTask()
            self._nursery.start_soon(self._run_repair, repair, task, rest)
        # After starting: decisions merged from several steps may start a repair and then cancel it.
        for repair in decisions.cancel:
            cancelled = self._tasks.get(repair)
            if cancelled is not None:
                cancelled.scope.cancel()

    async def _carry_out(self, decisions: Decisions) -> None:
        self._start_and_cancel(decisions)
        emitter = self._emitter
        ready = decisions.ready
        if len(ready) == 1:
            await emitter.emit(ready[0])
            return
        for batch in ready:
            emitter.enqueue(batch)
        # Also with nothing ready: wait until what others queued has gone (backpressure reaches every producer).
        await emitter.flush()

    # --- the 24hr-ticker checks ---

    async def _check_last_ids(self, symbols: list[str], rest: BinanceRest) -> None:
        sequencer = self.sequencer
        disconnects = self._status.disconnects
        wanted = {
            symbol: sequencer.sequences[symbol] for symbol in symbols if sequencer.wants_last_id(symbol, disconnects)
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
        behind = self.sequencer.behind(sequences, last_ids)
        if not behind:
            return
        await trio.sleep(self._last_id_settle)
        decisions = Decisions()
        for symbol, sequence in behind.items():
            decisions.extend(self.sequencer.apply_last_id(sequence, last_ids[symbol]))
        await self._carry_out(decisions)

    # --- the repair tasks ---

    async def _run_repair(self, repair: Repair, task: RepairTask, rest: BinanceRest) -> None:
        try:
            with task.scope:
                if repair.anchoring:
                    await self._anchor(repair, rest)
                else:
                    await self._repair(repair, rest)
        finally:
            del self._tasks[repair]
            task.done.set()

    async def _repair(self, repair: Repair, rest: BinanceRest) -> None:
        error: str | None = None
        next_id = repair.first_id
        try:
            while next_id <= repair.last_id:
                page = await fetch_page(rest, repair.symbol, next_id, repair.last_id, Backoff(self._empty_page_retry))
                if page is None:
                    break
                await self._carry_out(self.sequencer.backfilled(repair, page))
                if not self.sequencer.is_current(repair):
                    return
                next_id = page[-1].trade_id + 1
        except RestError as rest_error:
            error = f"backfill failed: {rest_error}"
            log.warning("backfill failed symbol=%s from_id=%d error=%s", repair.symbol, next_id, rest_error)
        await self._carry_out(self.sequencer.repair_ended(repair, error))

    async def _anchor(self, repair: Repair, rest: BinanceRest) -> None:
        error: str | None = None
        first_id = repair.first_id
        pages: list[list[Tick]] = []
        try:
            offset = repair.exchange_offset_ms
            if offset is None:
                offset = await exchange_offset_ms(rest, self._wall_ms)
            assert repair.subscribed_at_ms is not None
            since_ms = repair.subscribed_at_ms + offset - CLOCK_SKEW_MS
            first_id, pages = await fetch_since(rest, repair.symbol, repair.first_id, since_ms, self._max_backfill)
        except RestError as rest_error:
            error = f"trades since the subscription could not be checked: {rest_error}"
            log.warning("anchoring failed symbol=%s error=%s", repair.symbol, rest_error)
        await self._carry_out(self.sequencer.anchored(repair, first_id, pages, error))


async def fetch_page(
    rest: BinanceRest, symbol: str, next_id: int, last_id: int, empty: Backoff
) -> list[Tick] | None:
    """The next page of the trades ``next_id``..``last_id`` of ``symbol`` (ascending), or None where REST serves
    nothing from ``next_id`` on (too old). An empty answer is asked again under ``empty``'s policy (REST can be
    a moment behind the stream), then fails with ``RestError``."""
    while True:
        limit = min(TRADES_PAGE_LIMIT, last_id - next_id + 1)
        page = [tick for tick in await rest.historical_trades(symbol, next_id, limit) if tick.trade_id <= last_id]
        if page:
            return page if page[-1].trade_id >= next_id else None
        delay = empty.next_delay()
        if empty.exhausted:
            raise RestError(f"historicalTrades had no trades from id {next_id} ({empty.failures} empty answers)")
        log.info("empty trade page symbol=%s from_id=%d retry_in=%.1f", symbol, next_id, delay)
        await trio.sleep(delay)


async def fetch_since(
    rest: BinanceRest, symbol: str, before_id: int, since_ms: int, max_trades: int
) -> tuple[int, list[list[Tick]]]:
    """Pages back from ``before_id`` to the first trade at or after ``since_ms`` (exchange time), at most about
    ``max_trades``: returns the first id found (``before_id`` if none) and the pages, newest first."""
    first_id = before_id
    pages: list[list[Tick]] = []
    fetched = 0
    while before_id > 0 and fetched < max_trades:
        from_id = max(0, before_id - TRADES_PAGE_LIMIT)
        page = [tick for tick in await rest.historical_trades(symbol, from_id, before_id - from_id)
                if tick.trade_id < before_id]
        newer = [tick for tick in page if tick.trade_time_ms >= since_ms]
        if not newer:
            break
        pages.append(newer)
        first_id = newer[0].trade_id
        fetched += len(page)
        if len(newer) < len(page) or page[0].trade_id > from_id:
            break  # the subscription time lies within this page, or REST has nothing older
        before_id = from_id
    return first_id, pages


async def exchange_offset_ms(rest: BinanceRest, wall_ms: Callable[[], int]) -> int:
    """The exchange's clock minus ours, from its ``/api/v3/time`` (off by up to half the round trip)."""
    before = wall_ms()
    server_ms = await rest.server_time_ms()
    return server_ms - (before + wall_ms()) // 2
