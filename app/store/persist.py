"""The persistence tasks: tick and candle writers, and the periodic tick pruning.

Writers drain what is pending so that one transaction carries many batches (one ``trio.to_thread`` hop per
transaction), and begin one at most every ``COMMIT_INTERVAL_SECONDS`` unless a write's worth is waiting (group
commit). A counter moves only after the write has committed, so "persisted" always means on disk.

A slow but working database slows ingestion down (the writer reads its channel only between writes, and the
fan-out's backpressure does the rest). A failing one (locked beyond ``busy_timeout``, disk full or read-only,
I/O errors, the server down) must not: while writes fail the writer keeps reading its channel into a bounded
backlog, retries with full-jitter backoff, and writes the backlog in order once a write succeeds. What does
not fit in the backlog is counted per symbol as unwritten trade-id ranges and logged: it is still served from
memory, never silently dropped from the history.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Generic, TypeVar

import attrs
import trio
import trio.lowlevel

from app.backoff import Backoff, BackoffPolicy
from app.model import Candle, Tick
from app.store.candles import LateTrade, revise_candle
from app.store.storage import Storage, StorageWriteError

log = logging.getLogger(__name__)

T = TypeVar("T")

# Write at most this many ticks per transaction.
MAX_TICKS_PER_WRITE = 20_000
MAX_CANDLES_PER_WRITE = 20_000
# Group commit: a writer starts a transaction at most this often unless a write's worth is waiting. At a quiet
# market's rate each fan-out batch holds a tick or two, and writing each in a transaction of its own handed
# the database thread hundreds of jobs a second; every hand-over contends with the event loop for the GIL
# and delayed the /ws feed (bench/RESULTS.md, issue 16). Under load a write takes longer than this anyway.
COMMIT_INTERVAL_SECONDS = 0.1
# Retrying a failed storage write, for every writer of the database (``serve``'s and the persist role's):
# full-jitter backoff from 0.1 s up to 5 s; each writer keeps its own ``Backoff(STORAGE_RETRY)``.
STORAGE_RETRY = BackoffPolicy(start=0.1, cap=5.0)
# While the database fails, the most ticks (STORAGE_BACKLOG_TICKS sets the service's) and closed candles held
# in memory for it; beyond them new ones are counted as unwritten. Memory per held tick is in bench/RESULTS.md.
TICK_BACKLOG_LIMIT = 250_000
CANDLE_BACKLOG_LIMIT = 100_000
# Pruning deletes in short transactions of this many rows, so writers are never held up for long.
PRUNE_CHUNK = 20_000
PRUNE_EVERY_SECONDS = 600.0
DAY_MS = 86_400_000


@attrs.define
class PersistStatus:
    """Plain counters for /metrics and /health; bumped by the persistence tasks after each commit."""

    ticks_persisted: int = 0
    candles_persisted: int = 0
    tick_writes: int = 0
    candle_writes: int = 0
    write_failures: int = 0
    last_write_error: str | None = None
    # Trio time of the first failure of the current outage; None while writes succeed.
    failing_since: float | None = None
    # The writers ("ticks", "candles") whose last write failed: the outage ends when both succeed again.
    failing_writers: set[str] = attrs.Factory(set)
    # Held in memory for the database (waiting for a write to succeed).
    ticks_waiting: int = 0
    candles_waiting: int = 0
    # Could not be held while the database failed: missing from the history (still served from memory).
    ticks_unwritten: int = 0
    candles_unwritten: int = 0
    # symbol -> [first, last] trade-id ranges of unwritten ticks, merged when consecutive.
    unwritten_trade_ids: dict[str, list[list[int]]] = attrs.Factory(dict)
    # The highest trade id per symbol known to be committed.
    last_persisted_trade_id: dict[str, int] = attrs.Factory(dict)
    ticks_pruned: int = 0
    # Stored candles corrected by late trades that arrived after the candle left memory; late trades whose
    # candle is not stored (nothing to correct).
    stored_candle_revisions: int = 0
    late_trades_not_stored: int = 0

    def note_unwritten_ticks(self, ticks: Sequence[Tick]) -> None:
        self.ticks_unwritten += len(ticks)
        for tick in ticks:
            ranges = self.unwritten_trade_ids.setdefault(tick.symbol, [])
            if ranges and ranges[-1][1] + 1 == tick.trade_id:
                ranges[-1][1] = tick.trade_id
            else:
                ranges.append([tick.trade_id, tick.trade_id])


@attrs.define
class _Writer(Generic[T]):
    """What differs between the tick and the candle writer."""

    what: str
    write: Callable[[list[T]], Awaitable[None]]
    per_write: int
    backlog_limit: int
    committed: Callable[[list[T]], None]
    unwritten: Callable[[list[T]], None]
    waiting: Callable[[int], None]
    commit_interval: float = COMMIT_INTERVAL_SECONDS


def _gather(first: Sequence[T], batches: trio.MemoryReceiveChannel[Sequence[T]], limit: int | None) -> list[T]:
    """``first`` plus every batch already waiting (up to about ``limit`` items): one transaction for all."""
    pending = list(first)
    while limit is None or len(pending) < limit:
        try:
            pending.extend(batches.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            break
    return pending


def _hold(pending: list[T], batch: Sequence[T], limit: int) -> list[T]:
    """Adds ``batch`` to ``pending`` up to ``limit`` items; returns the items that did not fit (the newest, so
    the history stays contiguous up to the outage)."""
    room = max(0, limit - len(pending))
    pending.extend(batch[:room])
    return list(batch[room:])


async def _persist(
    batches: trio.MemoryReceiveChannel[Sequence[T]], writer: _Writer[T], status: PersistStatus, retry: Backoff
) -> None:
    pending: list[T] = []
    closed = False
    try:
        while True:
            if not pending:
                if closed:
                    return
                try:
                    first = await batches.receive()
                except trio.EndOfChannel:
                    return
                pending = _gather(first, batches, writer.per_write)
            chunk = pending[: writer.per_write]
            write_started = trio.current_time()
            try:
                await writer.write(chunk)
            except StorageWriteError as error:
                _note_failure(status, writer.what, error, len(pending))
                writer.waiting(len(pending))
                # Keep reading while waiting, so that ingestion goes on; hold what fits.
                deadline = trio.current_time() + retry.next_delay()
                with trio.move_on_at(deadline):
                    while not closed:
                        try:
                            batch = await batches.receive()
                        except trio.EndOfChannel:
                            closed = True
                            break
                        overflow = _hold(pending, batch, writer.backlog_limit)
                        if overflow:
                            _note_overflow(status, writer, overflow)
                        writer.waiting(len(pending))
                await trio.sleep_until(deadline)
                continue
            del pending[: len(chunk)]
            writer.committed(chunk)
            writer.waiting(len(pending))
            if writer.what in status.failing_writers:
                _note_recovery(status, writer.what)
            retry.reset()
            if not pending and not closed:
                # Group commit: gather until the interval since this write began is over (or a write's worth
                # is waiting), so that a trickle of batches is not one transaction each (see the constant).
                with trio.move_on_at(write_started + writer.commit_interval):
                    while len(pending) < writer.per_write:
                        try:
                            pending.extend(await batches.receive())
                        except trio.EndOfChannel:
                            closed = True
                            break
    except trio.Cancelled:
        if pending:
            writer.unwritten(pending)
            log.error("unwritten_at_shutdown what=%s count=%d error=%s", writer.what, len(pending),
                      status.last_write_error)
        raise


def _note_failure(status: PersistStatus, what: str, error: StorageWriteError, waiting: int) -> None:
    status.write_failures += 1
    changed = str(error) != status.last_write_error
    status.last_write_error = str(error)
    status.failing_writers.add(what)
    if status.failing_since is None:
        status.failing_since = trio.current_time()
        log.warning("storage_failed what=%s waiting=%d error=%s; holding writes in memory and retrying",
                    what, waiting, error)
    elif changed:
        log.warning("storage_still_failing what=%s waiting=%d error=%s", what, waiting, error)
    else:
        log.info("storage_retry_failed what=%s waiting=%d", what, waiting)


def _note_overflow(status: PersistStatus, writer: _Writer[T], overflow: list[T]) -> None:
    first_overflow = not (status.ticks_unwritten or status.candles_unwritten)
    writer.unwritten(overflow)
    if first_overflow:
        log.warning("storage_backlog_full what=%s limit=%d: newer %s are served from memory but will be missing "
                    "from the database (counted in /metrics and /health)", writer.what, writer.backlog_limit,
                    writer.what)


def _note_recovery(status: PersistStatus, what: str) -> None:
    status.failing_writers.discard(what)
    if status.failing_writers:
        log.info("storage_writer_recovered what=%s still_failing=%s", what, ",".join(sorted(status.failing_writers)))
        return
    outage = trio.current_time() - (status.failing_since or 0.0)
    log.warning("storage_recovered after_seconds=%.1f failures=%d ticks_unwritten=%d candles_unwritten=%d%s",
                outage, status.write_failures, status.ticks_unwritten, status.candles_unwritten,
                "".join(f" {symbol}={_ranges(ranges)}" for symbol, ranges in status.unwritten_trade_ids.items()))
    status.failing_since = None
    status.last_write_error = None


def _ranges(ranges: list[list[int]]) -> str:
    return ",".join(f"{first}..{last}" for first, last in ranges)


async def persist_ticks(
    tick_batches: trio.MemoryReceiveChannel[Sequence[Tick]],
    storage: Storage,
    status: PersistStatus,
    retry: Backoff,
    *,
    backlog_limit: int = TICK_BACKLOG_LIMIT,
) -> None:
    """Writes every tick, in arrival order, until ``tick_batches`` ends."""

    def committed(ticks: list[Tick]) -> None:
        status.tick_writes += 1
        status.ticks_persisted += len(ticks)
        last = status.last_persisted_trade_id
        for tick in ticks:
            if tick.trade_id > last.get(tick.symbol, -1):
                last[tick.symbol] = tick.trade_id

    def waiting(count: int) -> None:
        status.ticks_waiting = count

    writer = _Writer[Tick]("ticks", storage.write_ticks, MAX_TICKS_PER_WRITE, backlog_limit, committed,
                     status.note_unwritten_ticks, waiting)
    async with tick_batches:
        await _persist(tick_batches, writer, status, retry)


async def persist_candles(
    closed_candles: trio.MemoryReceiveChannel[Sequence[Candle]],
    storage: Storage,
    status: PersistStatus,
    retry: Backoff,
    *,
    backlog_limit: int = CANDLE_BACKLOG_LIMIT,
) -> None:
    """Writes every closed candle and revision until ``closed_candles`` ends."""

    def committed(candles: list[Candle]) -> None:
        status.candle_writes += 1
        status.candles_persisted += len(candles)

    def unwritten(candles: list[Candle]) -> None:
        status.candles_unwritten += len(candles)

    def waiting(count: int) -> None:
        status.candles_waiting = count

    writer = _Writer[Candle]("candles", storage.write_candles, MAX_CANDLES_PER_WRITE, backlog_limit, committed,
                             unwritten, waiting)
    async with closed_candles:
        await _persist(closed_candles, writer, status, retry)


async def persist_late_trades(
    late_trades: trio.MemoryReceiveChannel[Sequence[LateTrade]], storage: Storage, status: PersistStatus,
    retry: Backoff,
) -> None:
    """Applies late trades for candles no longer in memory to the stored candles, as their next revision (the
    API reads those from storage), until ``late_trades`` ends. Rare: only a gap repaired long after. A failing
    database is retried with ``retry`` (the channel then fills and the aggregator waits: nothing is dropped)."""
    async with late_trades:
        async for batch in late_trades:
            by_candle: dict[tuple[str, str, int], list[Tick]] = {}
            for late in _gather(batch, late_trades, None):
                by_candle.setdefault((late.tick.symbol, late.interval, late.open_time_ms), []).append(late.tick)
            for (symbol, interval, open_time_ms), ticks in by_candle.items():
                await until_written(partial(_revise_stored, storage, status, symbol, interval, open_time_ms, ticks),
                                    retry, partial(_note_failure, status, "candle revisions", waiting=len(ticks)))
                if "candle revisions" in status.failing_writers:
                    _note_recovery(status, "candle revisions")


async def until_written(
    write: Callable[[], Awaitable[object]], retry: Backoff, failed: Callable[[StorageWriteError], None]
) -> None:
    """Runs ``write`` until it commits: after each ``StorageWriteError``, ``failed`` is told and the next try
    waits ``retry.next_delay()``; ``retry`` is reset once it succeeds."""
    while True:
        try:
            await write()
        except StorageWriteError as error:
            failed(error)
            await trio.sleep(retry.next_delay())
            continue
        retry.reset()
        return


async def _revise_stored(
    storage: Storage, status: PersistStatus, symbol: str, interval: str, open_time_ms: int, ticks: list[Tick]
) -> None:
    stored = await storage.candles(symbol, interval, open_time_ms, open_time_ms, 1)
    if not stored or stored[0].open_time_ms != open_time_ms:
        status.late_trades_not_stored += len(ticks)
        log.warning("late trades for a candle not stored symbol=%s interval=%s open_time_ms=%d count=%d",
                    symbol, interval, open_time_ms, len(ticks))
        return
    revised = revise_candle(stored[0], ticks)
    if revised is not None:
        await storage.write_candles([revised])
        status.stored_candle_revisions += 1


def prune_cutoff_ms(now_ms: int, retention_days: float, keep_from_ms: int | None) -> int:
    """Ticks before this time may go: older than the retention, and not needed to rebuild an open candle."""
    cutoff = now_ms - math.ceil(retention_days * DAY_MS)
    return cutoff if keep_from_ms is None else min(cutoff, keep_from_ms)


async def prune_once(storage: Storage, status: PersistStatus, cutoff_ms: int) -> int:
    """Deletes ticks before ``cutoff_ms`` in short transactions; returns how many."""
    deleted = 0
    while True:
        try:
            chunk = await storage.delete_ticks_before(cutoff_ms, PRUNE_CHUNK)
        except StorageWriteError as error:
            log.warning("prune_failed error=%s; retrying at the next round", error)
            break
        deleted += chunk
        status.ticks_pruned += chunk
        if chunk < PRUNE_CHUNK:
            break
        await trio.lowlevel.checkpoint()  # let writers in between chunks
    if deleted:
        log.info("ticks_pruned count=%d before_ms=%d", deleted, cutoff_ms)
    return deleted


async def prune_ticks(
    storage: Storage,
    status: PersistStatus,
    retention_days: float,
    *,
    newest_trade_ms: Callable[[], int | None],
    keep_from_ms: Callable[[], int | None],
    every_seconds: float = PRUNE_EVERY_SECONDS,
) -> None:
    """Deletes ticks older than the retention, every ``every_seconds``; runs until cancelled.

    The retention counts back from the newest trade seen (the exchange's time; against Binance that is now,
    and a replayed recording keeps its own history). Ticks from ``keep_from_ms()`` on are always kept, because
    a restart rebuilds the open candles from them.
    """
    while True:
        newest = newest_trade_ms()
        if newest is not None:
            await prune_once(storage, status, prune_cutoff_ms(newest, retention_days, keep_from_ms()))
        await trio.sleep(every_seconds)
