"""Fan-out of batches to subscribers, each on its own bounded channel, filtered by key (the symbol).

Used by the tick hub and by the candle feed. The cost of a batch is paid per subscriber that wants something
in it: subscribers are indexed by key, so thousands of idle ones (subscribed to symbols that are not trading)
cost nothing, and a subscriber to every key costs one ``send_nowait`` per batch (batches are shared, never
copied). A full channel never blocks delivery to the others; the subscriber's ``OverflowPolicy`` decides.

A subscriber's keys change in place (``Fanout.change_keys``): its channel, and whatever is buffered in it, stay.
The change is applied by the fan-out's owner before its next batch, so the index is only ever touched between
batches.

A subscriber gets its own channel (``subscribe``), or is attached to one the caller opened (``attach``):
typically a clone of one channel that several fan-outs feed, so that one task (a ``/ws`` client's sender) waits
on all of its sources at once and is woken directly by the first batch. Such a channel does not end when one of
its sources does: the fan-out marks the subscriber ``ended`` and, when it closes, sends it an empty batch to say
so.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

import attrs
import trio

log = logging.getLogger(__name__)

T = TypeVar("T")

# A subscriber whose buffer stays full logs at most one warning per this many seconds.
ALARM_LOG_INTERVAL_SECONDS = 10.0
# Subscribers whose receiving end was closed are swept out when the list has doubled since the last sweep.
_MIN_SWEEP_SIZE = 64


class OverflowPolicy(enum.Enum):
    # External feeds: a subscriber whose buffer is full is cut off at once (its channel closed, with a reason).
    CUT_OFF = "cut_off"
    # The service's own consumers that must see everything (aggregator, database writer): they get a large
    # buffer; when it is full an alarm is raised (counted, logged) and the fan-out, after serving everyone
    # else, waits for room. Ingestion then slows down instead of losing data or growing memory.
    BACKPRESSURE = "backpressure"


@attrs.frozen(slots=True)
class ChannelDepth:
    name: str
    # Batches waiting in the channel, and its capacity (in batches).
    used: int
    size: int
    # Feed clients (cut off when slow) or the service's own consumers (backpressure); None: not a subscriber.
    policy: OverflowPolicy | None = None


@attrs.define(eq=False)
class Backlog:
    """Items waiting for the receiver of a shared channel, counted across all its sources: in the channel
    (``waiting``, kept by the fan-outs and the receiver) and taken but not yet sent on (``held``, the receiver's).
    A source whose delivery takes it past ``limit`` cuts the subscriber off, even while the receiver is stuck."""

    limit: int
    waiting: int = 0
    held: int = 0


@attrs.define(eq=False)
class Subscriber(Generic[T]):
    name: str
    policy: OverflowPolicy
    send_channel: trio.MemorySendChannel[Sequence[T]]
    # None: every key (symbol). Set by the fan-out only (see ``Fanout.change_keys``).
    keys: frozenset[str] | None
    buffer: int
    batches_sent: int = 0
    overflows: int = 0
    # Set when the fan-out cut this subscriber off (its channel then ends); None while subscribed or after it
    # left on its own.
    cut_off_reason: str | None = None
    # Attached to a channel it shares with other sources (``Fanout.attach``), and their common backlog.
    shared: bool = False
    backlog: Backlog | None = None
    # Set when the fan-out ended this subscriber: cut it off, or closed (the service is stopping).
    ended: bool = False
    _last_alarm_log: float = -ALARM_LOG_INTERVAL_SECONDS

    def depth(self) -> ChannelDepth:
        return ChannelDepth(self.name, self.send_channel.statistics().current_buffer_used, self.buffer, self.policy)


class Fanout(Generic[T]):
    """Subscribers and their channels; ``publish`` is called by one task only (the owner)."""

    def __init__(self, key: Callable[[T], str], label: str) -> None:
        self._key = key
        self._label = label
        self._subscribers: list[Subscriber[T]] = []
        self._everything: list[Subscriber[T]] = []
        self._by_key: dict[str, list[Subscriber[T]]] = {}
        self._sweep_at = _MIN_SWEEP_SIZE
        # Key changes asked for since the last batch, applied by the owner (``publish``, ``wants``).
        self._key_changes: dict[Subscriber[T], frozenset[str] | None] = {}
        self.closed = False
        self.cut_off = 0
        self.backpressure_alarms = 0

    @property
    def subscribers(self) -> tuple[Subscriber[T], ...]:
        return tuple(self._subscribers)

    @property
    def has_subscribers(self) -> bool:
        return bool(self._subscribers)

    def wants(self, key: str) -> bool:
        """Whether any subscriber would receive an item with this key."""
        if self._key_changes:
            self._apply_key_changes()
        return bool(self._everything) or key in self._by_key

    def subscribe(
        self, name: str, buffer: int, policy: OverflowPolicy, keys: frozenset[str] | None = None
    ) -> tuple[Subscriber[T], trio.MemoryReceiveChannel[Sequence[T]]]:
        if buffer < 1:
            raise ValueError(f"subscriber buffer must be at least 1 batch, got {buffer}")
        send_channel, receive_channel = trio.open_memory_channel[Sequence[T]](buffer)
        return self._add(Subscriber(name, policy, send_channel, keys, buffer)), receive_channel

    def attach(
        self, name: str, send_channel: trio.MemorySendChannel[Sequence[T]], buffer: int, policy: OverflowPolicy,
        keys: frozenset[str] | None = None, backlog: Backlog | None = None,
    ) -> Subscriber[T]:
        """A subscriber on ``send_channel`` (a clone the caller made; the fan-out closes it), whose channel holds
        ``buffer`` batches and, with ``backlog``, at most ``backlog.limit`` items. Its batches are never empty:
        an empty one means ``ended`` was set. It leaves by ``leave``, or when the receiving end closes."""
        return self._add(Subscriber(name, policy, send_channel, keys, buffer, shared=True, backlog=backlog))

    def _add(self, subscriber: Subscriber[T]) -> Subscriber[T]:
        if self.closed:
            subscriber.ended = True
            subscriber.send_channel.close()  # the service is stopping: the channel ends at once
            return subscriber
        self._subscribers.append(subscriber)
        self._index(subscriber)
        if len(self._subscribers) >= self._sweep_at:
            self._sweep()
        return subscriber

    def leave(self, subscriber: Subscriber[T]) -> None:
        """Unsubscribes ``subscriber`` and closes its channel. (Safe while ``publish`` waits: it then iterates its
        own list of deliveries, not the index.)"""
        self._remove(subscriber)

    def change_keys(self, subscriber: Subscriber[T], keys: frozenset[str] | None) -> None:
        """From the next batch on, ``subscriber`` receives items with ``keys`` (None: every key).

        Its channel stays, with what is already buffered in it: a client changing its symbols loses nothing
        and needs no second channel. A subscriber that left or was cut off is not brought back.
        """
        self._key_changes[subscriber] = keys

    def _apply_key_changes(self) -> None:
        changes, self._key_changes = self._key_changes, {}
        for subscriber, keys in changes.items():
            if subscriber.send_channel.statistics().open_receive_channels == 0 or subscriber not in self._subscribers:
                continue  # it left or was cut off meanwhile
            self._unindex(subscriber)
            subscriber.keys = keys
            self._index(subscriber)

    def _index(self, subscriber: Subscriber[T]) -> None:
        if subscriber.keys is None:
            self._everything.append(subscriber)
        else:
            for key in subscriber.keys:
                self._by_key.setdefault(key, []).append(subscriber)

    def _unindex(self, subscriber: Subscriber[T]) -> None:
        if subscriber.keys is None:
            self._everything.remove(subscriber)
        else:
            for key in subscriber.keys:
                listed = self._by_key[key]
                listed.remove(subscriber)
                if not listed:
                    del self._by_key[key]

    def _sweep(self) -> None:
        """Drops subscribers that closed their end but never got a batch since (their symbols were idle)."""
        for subscriber in [s for s in self._subscribers if s.send_channel.statistics().open_receive_channels == 0]:
            self._remove(subscriber)
        self._sweep_at = max(_MIN_SWEEP_SIZE, 2 * len(self._subscribers))

    async def publish(self, batch: Sequence[T]) -> None:
        if self._key_changes:
            self._apply_key_changes()
        if not self._subscribers or not batch:
            return
        deliveries: list[tuple[Subscriber[T], Sequence[T]]] = [(s, batch) for s in self._everything]
        if self._by_key:
            groups: dict[str, list[T]] = {}
            key = self._key
            for item in batch:
                item_key = key(item)
                group = groups.get(item_key)
                if group is None:
                    groups[item_key] = [item]
                else:
                    group.append(item)
            several: dict[Subscriber[T], list[T]] = {}
            for item_key, items in groups.items():
                for subscriber in self._by_key.get(item_key, ()):
                    if len(groups) == 1 or len(subscriber.keys or ()) == 1:
                        deliveries.append((subscriber, items))
                    else:
                        several.setdefault(subscriber, []).extend(items)
            deliveries.extend((subscriber, items) for subscriber, items in several.items())
        waiting: list[tuple[Subscriber[T], Sequence[T]]] = []
        for subscriber, delivered in deliveries:
            try:
                subscriber.send_channel.send_nowait(delivered)
                subscriber.batches_sent += 1
                backlog = subscriber.backlog
                if backlog is not None:
                    backlog.waiting += len(delivered)
                    if backlog.waiting + backlog.held > backlog.limit:
                        self._cut_off(subscriber, f"fell behind by more than {backlog.limit} items")
            except trio.WouldBlock:
                if subscriber.policy is OverflowPolicy.CUT_OFF:
                    self._cut_off(subscriber)
                else:
                    waiting.append((subscriber, delivered))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._remove(subscriber)  # it closed its end: it left
        # Everyone else has this batch already; only now wait for the full internal consumers.
        for subscriber, pending in waiting:
            self._alarm(subscriber)
            try:
                await subscriber.send_channel.send(pending)
                subscriber.batches_sent += 1
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._remove(subscriber)

    def _cut_off(self, subscriber: Subscriber[T], reason: str | None = None) -> None:
        subscriber.overflows += 1
        self.cut_off += 1
        subscriber.ended = True
        subscriber.cut_off_reason = reason or f"fell behind: its buffer of {subscriber.buffer} batches was full"
        log.warning("subscriber_cut_off source=%s name=%s buffer=%d reason=%s", self._label, subscriber.name,
                    subscriber.buffer, subscriber.cut_off_reason)
        self._remove(subscriber)

    def _alarm(self, subscriber: Subscriber[T]) -> None:
        subscriber.overflows += 1
        self.backpressure_alarms += 1
        now = trio.current_time()
        if now - subscriber._last_alarm_log >= ALARM_LOG_INTERVAL_SECONDS:
            subscriber._last_alarm_log = now
            log.warning("subscriber_backpressure source=%s name=%s buffer=%d overflows=%d: the fan-out waits",
                        self._label, subscriber.name, subscriber.buffer, subscriber.overflows)

    def _remove(self, subscriber: Subscriber[T]) -> None:
        subscriber.send_channel.close()
        if subscriber not in self._subscribers:
            return
        self._subscribers.remove(subscriber)
        self._key_changes.pop(subscriber, None)
        self._unindex(subscriber)

    def depths(self) -> list[ChannelDepth]:
        return [subscriber.depth() for subscriber in self._subscribers]

    def close(self) -> None:
        """Ends every subscriber's channel (after the last batch); later subscribers get an ended channel."""
        self.closed = True
        for subscriber in self._subscribers:
            subscriber.ended = True
            if subscriber.shared:
                try:
                    subscriber.send_channel.send_nowait(())  # says "ended" where no end of channel will
                except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                    pass  # full: its receiver has batches to read, and looks at ``ended`` after them
            subscriber.send_channel.close()
        self._subscribers.clear()
        self._everything.clear()
        self._by_key.clear()
        self._key_changes.clear()
