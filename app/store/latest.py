"""Latest tick per symbol and the fan-out of tick batches to subscribers.

One task (``fan_out``) owns both: it drains the ingest channel into batches, updates the latest ticks and hands
each subscriber the part of the batch it subscribed to, on the subscriber's own bounded channel. A full
subscriber channel never blocks the others: the subscriber's ``OverflowPolicy`` decides (see ``broadcast``).

Subscribers of ``Tick`` objects (the aggregator, the database writer, embedding programs) and the ``/ws`` feed's
clients are two fan-outs: the feed's receive ``FeedTick``s, each tick rendered to its API JSON once, here, for
however many clients send it. (Rendering in each client's sender behind a shared cache re-rendered every tick a
client had fallen further behind than the cache: with 1,000 clients that was a third of the service's CPU, and
the more it cost the further clients fell behind.)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from itertools import chain
from operator import attrgetter

import attrs
import orjson
import trio

from app.convert import api_converter
from app.model import Tick
from app.store.broadcast import Backlog, ChannelDepth, Fanout, OverflowPolicy, Subscriber

__all__ = ["MAX_BATCH", "ChannelDepth", "FeedTick", "OverflowPolicy", "Subscriber", "TickHub", "fan_out"]

log = logging.getLogger(__name__)

# Fan-out moves batches: one wake-up per subscriber per batch instead of per tick. A subscriber's memory is
# bounded by its buffer (in batches) times this.
MAX_BATCH = 512


@attrs.frozen(slots=True)
class FeedTick:
    """A tick as the ``/ws`` feed sends it: its API JSON, rendered once for every client."""

    symbol: str
    trade_id: int
    event_time_ms: int
    json: orjson.Fragment = attrs.field(eq=False, repr=False)

    @classmethod
    def of(cls, tick: Tick) -> FeedTick:
        return cls(tick.symbol, tick.trade_id, tick.event_time_ms,
                   orjson.Fragment(orjson.dumps(api_converter.unstructure(tick))))


class TickHub:
    """Latest tick per symbol and the tick subscribers; mutated only by the ``fan_out`` task."""

    def __init__(self) -> None:
        self._latest: dict[str, Tick] = {}
        self._fanout = Fanout[Tick](attrgetter("symbol"), "ticks")
        self._feed = Fanout[FeedTick](attrgetter("symbol"), "ticks")
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

    def attach_feed(
        self, name: str, send_channel: trio.MemorySendChannel[Sequence[FeedTick]], buffer: int,
        symbols: frozenset[str] | None = None, backlog: Backlog | None = None,
    ) -> Subscriber[FeedTick]:
        """A ``/ws`` client's tick source on its own channel (see ``Fanout.attach``): batches of rendered ticks;
        cut off when the channel (``buffer`` batches) or the ``backlog`` is full."""
        return self._feed.attach(name, send_channel, buffer, OverflowPolicy.CUT_OFF, symbols, backlog)

    def change_feed_symbols(self, subscriber: Subscriber[FeedTick], symbols: frozenset[str] | None) -> None:
        self._feed.change_keys(subscriber, symbols)

    def leave_feed(self, subscriber: Subscriber[FeedTick]) -> None:
        self._feed.leave(subscriber)

    @property
    def closed(self) -> bool:
        """True once ingestion has ended and every channel was closed (the service is stopping)."""
        return self._fanout.closed

    @property
    def subscribers(self) -> tuple[Subscriber[Tick] | Subscriber[FeedTick], ...]:
        return (*self._fanout.subscribers, *self._feed.subscribers)

    @property
    def subscriber_count(self) -> int:
        return len(self._fanout.subscribers) + len(self._feed.subscribers)

    @property
    def subscribers_cut_off(self) -> int:
        return self._fanout.cut_off + self._feed.cut_off

    @property
    def backpressure_alarms(self) -> int:
        return self._fanout.backpressure_alarms

    def channel_depths(self) -> list[ChannelDepth]:
        return [*self._fanout.depths(), *self._feed.depths()]

    async def publish(self, batch: Sequence[Tick]) -> None:
        latest = self._latest
        for tick in batch:
            latest[tick.symbol] = tick
        self.ticks_published += len(batch)
        feed = self._feed
        if feed.has_subscribers:
            # First: feed clients are never waited for, the backpressured consumers below may be.
            await feed.publish([FeedTick.of(tick) for tick in batch if feed.wants(tick.symbol)])
        await self._fanout.publish(batch)

    def close(self) -> None:
        self._fanout.close()
        self._feed.close()


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
