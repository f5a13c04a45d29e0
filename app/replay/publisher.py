"""The one publishing loop: takes a source's scheduled events, paces them, and hands them to the hub."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import trio

from app.replay.events import MarketEvent
from app.replay.hub import Hub
from app.replay.sources import Scheduled

log = logging.getLogger(__name__)


async def run_source(
    hub: Hub, schedule: Iterator[Scheduled], *, speed: float, batch_limit: int, wait_for_subscribers: int = 0
) -> None:
    """Publishes ``schedule`` at ``speed`` times its own pace (0: unpaced, as fast as subscribers take it).

    Events that are due together go out as one batch per wake-up, so fan-out costs per batch, not per
    event; an unpaced source waits for room in subscribers' queues instead of dropping them.
    """
    while hub.subscribed_clients() < wait_for_subscribers:
        await hub.wait_changed()
    start = trio.current_time()
    # Events due within this much of now go out together: one wake-up per millisecond at most, however
    # busy the market (a 20k trades/s source would otherwise wake the loop for every trade).
    granularity = 0.001
    batch: list[MarketEvent] = []
    pending = next(schedule, None)
    while pending is not None:
        if speed > 0:
            due = start + pending.offset_ns / 1e9 / speed
            if due > trio.current_time() + granularity:
                await _flush(hub, batch, unpaced=False)
                batch = []
                await trio.sleep_until(due)
                continue
        batch.append(pending.event)
        pending = next(schedule, None)
        if len(batch) >= batch_limit:
            await _flush(hub, batch, unpaced=speed <= 0)
            batch = []
            await trio.lowlevel.checkpoint()
    await _flush(hub, batch, unpaced=speed <= 0)
    log.info("source finished published=%d", hub.ledger.total)
    hub.source_done.set()
    hub.changed()


async def _flush(hub: Hub, batch: list[MarketEvent], *, unpaced: bool) -> None:
    if not batch:
        return
    if unpaced:
        await hub.publish_waiting(batch)
    else:
        hub.publish(batch)
