"""Latest tick per symbol and the fan-out of tick batches to subscribers.

One task (``fan_out``) owns both: it drains the ingest channel, updates the latest ticks and hands each
subscriber the batch on the subscriber's own bounded channel. A full subscriber channel never blocks the
fan-out: the subscriber's declared policy decides what happens (see ``OverflowPolicy``).
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Sequence

import attrs
import trio

from app.model import Tick

log = logging.getLogger(__name__)

# Fan-out moves batches: one wake-up per subscriber per batch instead of per tick.
MAX_BATCH = 1024


class OverflowPolicy(enum.Enum):
    # External feeds: a subscriber that falls behind is cut off (its channel closed) with a reason.
    CUT_OFF = "cut_off"
    # Internal consumers that must see every trade: the fan-out waits for them, so ingestion slows down
    # rather than losing data; each time their buffer fills an alarm is logged and counted.
    BACKPRESSURE = "backpressure"


@attrs.define(eq=False)
class Subscriber:
    name: str
    policy: OverflowPolicy
    send_channel: trio.MemorySendChannel[Sequence[Tick]]
    symbols: frozenset[str] | None  # None: every symbol
    overflows: int = 0
    cut_off_reason: str | None = None


class TickHub:
    """Latest tick per symbol and the set of subscribers; mutated only by the ``fan_out`` task."""

    def __init__(self) -> None:
        self._latest: dict[str, Tick] = {}
        self._subscribers: list[Subscriber] = []
        self.ticks_published = 0
        self.subscribers_cut_off = 0
        self.backpressure_alarms = 0

    def latest(self) -> dict[str, Tick]:
        """A snapshot (a copy) of the latest tick per symbol."""
        return dict(self._latest)

    def latest_for(self, symbol: str) -> Tick | None:
        return self._latest.get(symbol)

    def subscribe(
        self,
        name: str,
        buffer: int,
        policy: OverflowPolicy,
        symbols: frozenset[str] | None = None,
    ) -> trio.MemoryReceiveChannel[Sequence[Tick]]:
        """A new subscriber's channel of tick batches; it ends when the hub closes or cuts it off.

        ``buffer`` counts batches, so memory stays bounded by ``buffer * MAX_BATCH`` ticks.
        """
        send_channel, receive_channel = trio.open_memory_channel[Sequence[Tick]](buffer)
        self._subscribers.append(Subscriber(name, policy, send_channel, symbols))
        return receive_channel

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    async def publish(self, batch: Sequence[Tick]) -> None:
        for tick in batch:
            self._latest[tick.symbol] = tick
        self.ticks_published += len(batch)
        for subscriber in list(self._subscribers):
            selected = batch if subscriber.symbols is None else [
                tick for tick in batch if tick.symbol in subscriber.symbols
            ]
            if selected:
                await self._deliver(subscriber, selected)

    async def _deliver(self, subscriber: Subscriber, batch: Sequence[Tick]) -> None:
        try:
            subscriber.send_channel.send_nowait(batch)
            return
        except trio.WouldBlock:
            pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            # The subscriber closed its end: it left.
            self._remove(subscriber, None)
            return
        subscriber.overflows += 1
        if subscriber.policy is OverflowPolicy.CUT_OFF:
            self.subscribers_cut_off += 1
            reason = f"subscriber {subscriber.name!r} fell behind (buffer full); cut off"
            log.warning("subscriber_cut_off name=%s reason=%r", subscriber.name, reason)
            self._remove(subscriber, reason)
            return
        self.backpressure_alarms += 1
        log.warning("subscriber_backpressure name=%s overflows=%d: ingestion waits for it",
                    subscriber.name, subscriber.overflows)
        try:
            await subscriber.send_channel.send(batch)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._remove(subscriber, None)

    def _remove(self, subscriber: Subscriber, reason: str | None) -> None:
        subscriber.cut_off_reason = reason
        subscriber.send_channel.close()
        self._subscribers.remove(subscriber)

    def close(self) -> None:
        for subscriber in self._subscribers:
            subscriber.send_channel.close()
        self._subscribers.clear()


async def fan_out(ticks: trio.MemoryReceiveChannel[Tick], hub: TickHub) -> None:
    """Drain ingested ticks in batches into the hub; closes every subscriber when ingestion ends."""
    try:
        async with ticks:
            async for first in ticks:
                batch = [first]
                while len(batch) < MAX_BATCH:
                    try:
                        batch.append(ticks.receive_nowait())
                    except trio.WouldBlock:
                        break
                await hub.publish(batch)
    finally:
        hub.close()
