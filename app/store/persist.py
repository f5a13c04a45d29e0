"""The persistence task: writes tick batches and closed candles to storage in batches."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import trio

from app.model import Candle, Tick
from app.store.storage import Storage

log = logging.getLogger(__name__)

# Write at most this many ticks per transaction.
MAX_TICKS_PER_WRITE = 10_000


async def persist_ticks(tick_batches: trio.MemoryReceiveChannel[Sequence[Tick]], storage: Storage) -> None:
    """Write every tick; drains what is pending so that one transaction carries many batches."""
    async with tick_batches:
        async for batch in tick_batches:
            pending = list(batch)
            while len(pending) < MAX_TICKS_PER_WRITE:
                try:
                    pending.extend(tick_batches.receive_nowait())
                except trio.WouldBlock:
                    break
            await storage.write_ticks(pending)


async def persist_candles(closed_candles: trio.MemoryReceiveChannel[Candle], storage: Storage) -> None:
    async with closed_candles:
        async for candle in closed_candles:
            pending = [candle]
            while True:
                try:
                    pending.append(closed_candles.receive_nowait())
                except trio.WouldBlock:
                    break
            await storage.write_candles(pending)
