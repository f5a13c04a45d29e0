"""The persistence tasks: tick and candle writers, and the periodic tick pruning.

Writers drain what is pending so that one transaction carries many batches (one ``trio.to_thread`` hop per
transaction). A counter moves only after the write has committed, so "persisted" always means on disk. A failed
write (disk full, locked database) is retried with backoff, the batch kept: the writer's channel then fills and
the fan-out's backpressure slows ingestion; nothing is dropped and memory stays bounded by the channel.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import attrs
import trio
import trio.lowlevel

from app.model import Candle, Tick
from app.store.storage import Storage, StorageWriteError

log = logging.getLogger(__name__)

T = TypeVar("T")

# Write at most this many ticks per transaction.
MAX_TICKS_PER_WRITE = 20_000
RETRY_START_SECONDS = 0.1
RETRY_CAP_SECONDS = 5.0
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
    # The highest trade id per symbol known to be committed.
    last_persisted_trade_id: dict[str, int] = attrs.Factory(dict)
    ticks_pruned: int = 0


async def _write_until_done(
    write: Callable[[T], Awaitable[None]], rows: T, what: str, status: PersistStatus
) -> None:
    delay = RETRY_START_SECONDS
    while True:
        try:
            await write(rows)
        except StorageWriteError as error:
            status.write_failures += 1
            status.last_write_error = str(error)
            log.warning("write_failed what=%s retry_in=%.1fs error=%s", what, delay, error)
            await trio.sleep(delay)
            delay = min(delay * 2, RETRY_CAP_SECONDS)
            continue
        status.last_write_error = None
        return


def _gather(first: Sequence[T], batches: trio.MemoryReceiveChannel[Sequence[T]], limit: int | None) -> list[T]:
    """``first`` plus every batch already waiting (up to about ``limit`` items): one transaction for all."""
    pending = list(first)
    while limit is None or len(pending) < limit:
        try:
            pending.extend(batches.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            break
    return pending


async def persist_ticks(
    tick_batches: trio.MemoryReceiveChannel[Sequence[Tick]], storage: Storage, status: PersistStatus
) -> None:
    """Writes every tick, in arrival order, until ``tick_batches`` ends."""
    async with tick_batches:
        async for batch in tick_batches:
            pending = _gather(batch, tick_batches, MAX_TICKS_PER_WRITE)
            await _write_until_done(storage.write_ticks, pending, "ticks", status)
            status.tick_writes += 1
            status.ticks_persisted += len(pending)
            last = status.last_persisted_trade_id
            for tick in pending:
                if tick.trade_id > last.get(tick.symbol, -1):
                    last[tick.symbol] = tick.trade_id


async def persist_candles(
    closed_candles: trio.MemoryReceiveChannel[Sequence[Candle]], storage: Storage, status: PersistStatus
) -> None:
    """Writes every closed candle and revision until ``closed_candles`` ends."""
    async with closed_candles:
        async for batch in closed_candles:
            pending = _gather(batch, closed_candles, None)
            await _write_until_done(storage.write_candles, pending, "candles", status)
            status.candle_writes += 1
            status.candles_persisted += len(pending)


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
