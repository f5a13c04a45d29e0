"""Latest tick per symbol and the fan-out of tick batches to subscribers.

One task (``fan_out``) owns both: it drains the ingest channel into batches, updates the latest ticks and hands
each subscriber the part of the batch it subscribed to, on the subscriber's own bounded channel. A full
subscriber channel never blocks the others: the subscriber's ``OverflowPolicy`` decides (see ``broadcast``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from itertools import chain
from operator import attrgetter

import trio

from app.model import Tick
from app.store.broadcast import ChannelDepth, Fanout, OverflowPolicy, Subscriber

__all__ = ["MAX_BATCH", "ChannelDepth", "OverflowPolicy", "Subscriber", "TickHub", "fan_out"]

log = logging.getLogger(__name__)

# Fan-out moves batches: one wake-up per subscriber per batch instead of per tick. A subscriber's memory is
# bounded by its buffer (in batches) times this.
MAX_BATCH = 512


class TickHub:
    """Latest tick per symbol and the tick subscribers; mutated only by the ``fan_out`` task."""

    def __init__(self) -> None:
        self._latest: dict[str, Tick] = {}
        self._fanout = Fanout[Tick](attrgetter("symbol"), "ticks")
        self.ticks_published = 0

    def latest(self) -> dict[str, Tick]:
        """A snapshot (a copy) of the latest tick per symbol."""
        return dict(self._latest)

    def latest_for(self, symbol: str) -> Tick | None:
        return self._latest.get(symbol)

    def newest_trade_ms(self) -> int | None:
        """The latest trade time over all symbols (None before the first tick)."""
        return max((tick.trade_time_ms for tick in self._latest.values()), default=None)

    def subscribe(
        self,
        name: str,
        buffer: int,
        policy: OverflowPolicy,
        symbols: frozenset[str] | None = None,
    ) -> tuple[Subscriber[Tick], trio.MemoryReceiveChannel[Sequence[Tick]]]:
        """A new subscriber (its ``cut_off_reason``, ``overflows``) and its channel of tick batches (``symbols``
        None: every symbol).

        ``buffer`` counts batches (of at most about ``MAX_BATCH`` ticks). The channel ends when the hub closes
        (``closed`` is then True) or when the subscriber is cut off (``cut_off_reason`` says why). Closing the
        receiving end unsubscribes; ``change_symbols`` changes what it receives, keeping the channel.
        """
        return self._fanout.subscribe(name, buffer, policy, symbols)

    def change_symbols(self, subscriber: Subscriber[Tick], symbols: frozenset[str] | None) -> None:
        """``subscriber`` receives ``symbols`` (None: every symbol) from the next batch on."""
        self._fanout.change_keys(subscriber, symbols)

    @property
    def closed(self) -> bool:
        """True once ingestion has ended and every channel was closed (the service is stopping)."""
        return self._fanout.closed

    @property
    def subscribers(self) -> tuple[Subscriber[Tick], ...]:
        return self._fanout.subscribers

    @property
    def subscriber_count(self) -> int:
        return len(self._fanout.subscribers)

    @property
    def subscribers_cut_off(self) -> int:
        return self._fanout.cut_off

    @property
    def backpressure_alarms(self) -> int:
        return self._fanout.backpressure_alarms

    def channel_depths(self) -> list[ChannelDepth]:
        return self._fanout.depths()

    async def publish(self, batch: Sequence[Tick]) -> None:
        latest = self._latest
        for tick in batch:
            latest[tick.symbol] = tick
        self.ticks_published += len(batch)
        await self._fanout.publish(batch)

    def close(self) -> None:
        self._fanout.close()


async def fan_out(ticks: trio.MemoryReceiveChannel[list[Tick]], hub: TickHub) -> None:
    """Publishes ingested batches to the hub, merging those waiting (up to ``MAX_BATCH`` ticks) into one;
    closes every subscriber when ingestion ends."""
    try:
        async with ticks:
            async for first in ticks:
                batch = first
                if len(batch) < MAX_BATCH:
                    waiting = _receive_waiting(ticks, MAX_BATCH - len(batch))
                    if waiting:
                        batch = [*batch, *chain.from_iterable(waiting)]
                await hub.publish(batch)
    finally:
        hub.close()
    log.debug("fan_out ended published=%d", hub.ticks_published)


def _receive_waiting(ticks: trio.MemoryReceiveChannel[list[Tick]], room: int) -> list[list[Tick]]:
    """Batches already in the channel, until they hold ``room`` ticks (the last one may overshoot)."""
    waiting: list[list[Tick]] = []
    while room > 0:
        try:
            batch = ticks.receive_nowait()
        except (trio.WouldBlock, trio.EndOfChannel):
            break
        waiting.append(batch)
        room -= len(batch)
    return waiting
