"""The WebSocket feed at ``/ws``: the Trio task serving one client, wiring the pure parts together.

``feed_protocol`` turns client messages into requests and keeps the client's subscriptions; ``feed_outbox``
holds what waits to be sent and decides when it goes (at once when the connection is idle, coalesced while a
send is in flight). Ticks arrive rendered (the hub renders each once, ``FeedTick``); ``feed_render`` renders
candle updates once for all clients. This module moves data:

- a reader task answers client messages;
- the session's own task waits on one channel, its inbox, which every source of the session feeds (the hub's
  ticks and the candle feed of each subscribed interval are attached to clones of it), so the first batch after a
  quiet spell wakes the sender itself; it sends what the outbox hands over, then takes what piled up meanwhile.

Data frames look like ``{"channel": "ticks", "data": [tick, ...]}`` and ``{"channel": "candles", "interval":
"1m", "data": [candle, ...]}``. On a candle subscription the open candle of each symbol is sent first, then every
update: open candles (``"closed": false``), closed ones and revisions. Trades lost for good (an unrepaired gap of
the exchange feed, or bus entries trimmed before an API replica read them) are said to every client subscribed to
the symbol: ``{"op": "gap", "symbol", "first_trade_id", "last_trade_id", "reason", "detected_at"}``, ahead of the
data waiting for it.

A client that does not read lets the outbox grow; past ``FeedLimits.max_pending`` items it is cut off with close
code 1013 and a reason, so it never holds memory or slows anyone else.

Ingestion has priority over the feed: at most ``FeedLimits.concurrent_sends`` sessions render frames in one pass
of Trio's scheduler (a shared ``trio.CapacityLimiter``); the others wait off the run queue, their data coalescing
in their inboxes (no task runs for them meanwhile) into fuller frames, so the feed's frames per pass stay
bounded however many clients are busy. Without it, a thousand busy sessions each take a turn in every pass of
Trio's scheduler, a pass grows to seconds, and the exchange connection's reader (one read per pass) falls so far
behind that the exchange drops it.

A connection with no subscription costs its tasks only: sources are subscribed on demand, and a changed symbol
set changes the source subscription in place.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import attrs
import orjson
import trio
from quart import Websocket

from app.convert import api_converter
from app.ingest.status import GapNotices
from app.model import Candle, Gap
from app.store.aggregator import CandleFeed
from app.store.broadcast import Backlog
from app.store.latest import FeedTick, Subscriber, TickHub
from app.web.feed_outbox import CandleFrame, Frame, Outbox, TickFrame
from app.web.feed_protocol import (
    ClientError,
    Request,
    SourceChange,
    Subscriptions,
    acknowledgement,
    parse_request,
    with_id,
)
from app.web.feed_render import RenderCache

__all__ = ["FeedLimits", "FeedSources", "FeedStats", "RenderCache", "serve_feed"]

log = logging.getLogger(__name__)

# WebSocket close codes (RFC 6455 and IANA registry).
CLOSE_TRY_AGAIN_LATER = 1013
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY_VIOLATION = 1008
MAX_PENDING_REPLIES = 1_000


@attrs.frozen
class FeedSources:
    """What the feed subscribes to and offers: the tick hub, the candle feed, the served symbols, and the
    unrepaired gaps to tell."""

    ticks: TickHub
    candles: CandleFeed
    served_symbols: Callable[[], tuple[str, ...]]
    # Interval names a client may subscribe to.
    intervals: tuple[str, ...]
    max_subscriptions_per_connection: int
    gaps: GapNotices = attrs.Factory(GapNotices)


@attrs.frozen(slots=True)
class FeedLimits:
    # Batches a session's inbox holds (references to shared batches: cheap), from all its sources: what arrives
    # while it waits for a send slot or sends. A client cut off for a full inbox fell seconds behind.
    source_buffer: int = 4096
    # Ticks and candle updates waiting for a slow client before it is cut off.
    max_pending: int = 50_000
    # After a cut-off, how long the close frame may take to get through before the connection is dropped.
    close_timeout_seconds: float = 5.0
    # Sessions rendering frames in one pass of the scheduler, over all clients: bounds the feed's share of each
    # pass, so ingestion keeps its turns however many clients are busy (16 full 2,000-tick frames: tens of ms).
    concurrent_sends: int = 16


@attrs.define
class FeedStats:
    """Plain counters for /metrics, bumped by the feed's tasks."""

    connections: int = 0
    connections_total: int = 0
    # Connections subscribed to at least one channel.
    subscribed: int = 0
    # Subscriptions held by all connections (one per symbol and channel, "*" counting one), and subscribe
    # requests refused for going over the per-connection limit.
    subscriptions: int = 0
    subscriptions_refused: int = 0
    subscribers_cut_off: int = 0
    tick_frames: int = 0
    candle_frames: int = 0
    ticks_sent: int = 0
    candles_sent: int = 0
    messages_rejected: int = 0
    # Exchange event time -> send time of the newest tick of each tick frame.
    last_lag_seconds: float | None = None
    lag_seconds_total: float = 0.0
    lag_samples: int = 0


# What a session's sources put in its inbox: a batch of ticks, a batch of candles of one interval, or nothing
# (a nudge: a reply is waiting, or a source ended).
InboxBatch = Sequence[FeedTick] | Sequence[Candle]


class FeedSession:
    """One WebSocket client: its subscriptions, its outbox, and the tasks that serve it."""

    def __init__(
        self, sources: FeedSources, stats: FeedStats, limits: FeedLimits, cache: RenderCache, websocket: Websocket,
        number: int, send_slots: trio.CapacityLimiter,
    ) -> None:
        self._service = sources
        self._send_slots = send_slots
        self._stats = stats
        self._cache = cache
        self._limits = limits
        self._websocket = websocket
        self._name = f"ws:{number}"
        self._nursery: trio.Nursery | None = None
        self._subscriptions = Subscriptions(sources.max_subscriptions_per_connection)
        self._outbox = Outbox()
        self._inbox_send, self._inbox = trio.open_memory_channel[InboxBatch](limits.source_buffer)
        # Items in the inbox and in the outbox: the sources cut the client off past ``max_pending``, even while
        # the sender is stuck in a send to a client that stopped reading.
        self._backlog = Backlog(limits.max_pending)
        # Set while the sender waits on its inbox: a reply then nudges it.
        self._idle = False
        self._tick_source: Subscriber[FeedTick] | None = None
        self._candle_sources: dict[str, Subscriber[Candle]] = {}
        self._close: tuple[int, str] | None = None
        # A subscription changed since the outbox was last taken: ticks queued before it may be unwanted now.
        self._changed_since_take = False
        self._counted_subscribed = False
        self._counted_subscriptions = 0
        # Set when the client is cut off: nothing more is queued or sent, only the close frame.
        self._discarding = False
        self._gaps_watched = False

    async def run(self) -> None:
        self._stats.connections += 1
        self._stats.connections_total += 1
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._read_loop)
                await self._send_loop()
                nursery.cancel_scope.cancel()
        finally:
            self._end_sources()
            self._inbox.close()
            self._inbox_send.close()
            self._stats.subscriptions -= self._counted_subscriptions
            self._counted_subscriptions = 0
            self._stats.connections -= 1

    # --- client messages -----------------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        while True:
            self._handle(await self._websocket.receive())

    def _handle(self, message: str | bytes) -> None:
        try:
            request = parse_request(message, self._service.intervals, self._service.served_symbols)
            if request.op == "ping":
                self._reply(with_id({"op": "pong"}, request.request_id))
            elif request.op == "list":
                self._reply(self._subscriptions.listing(request.request_id))
            else:
                self._change(request)
        except ClientError as error:
            self._stats.messages_rejected += 1
            if error.code == "too_many_subscriptions":
                self._stats.subscriptions_refused += 1
            self._reply(error.reply())

    def _change(self, request: Request) -> None:
        change = self._subscriptions.apply(request)
        self._changed_since_take = True
        self._count_subscriptions()
        self._reply(acknowledgement(request))
        if request.op == "subscribe" and request.channel == "candles":
            assert request.interval is not None
            wanted = self._service.served_symbols() if request.symbols is None else request.symbols
            candles = [self._service.candles.open_candle(symbol, request.interval) for symbol in wanted]
            self._add_candles(request.interval, [candle for candle in candles if candle is not None])
        if change is not None:
            self._change_source(change)
        if not self._gaps_watched:
            # From the first subscription on: a connection that never subscribes costs no watcher.
            self._gaps_watched = True
            assert self._nursery is not None
            self._nursery.start_soon(self._tell_gaps, self._service.gaps.recorded)

    async def _tell_gaps(self, seen: int) -> None:
        """Tells the client each unrepaired gap of a symbol it is subscribed to, recorded after the first ``seen``."""
        notices = self._service.gaps
        while True:
            await notices.wait_after(seen)
            for gap in notices.since(seen):
                if self._subscribed_to(gap):
                    self._reply({"op": "gap", **api_converter.unstructure(gap)})
            seen = notices.recorded

    def _subscribed_to(self, gap: Gap) -> bool:
        subscriptions = self._subscriptions
        return subscriptions.ticks.wants(gap.symbol) or any(
            selection.wants(gap.symbol) for selection in subscriptions.candles.values())

    def _reply(self, reply: dict[str, object]) -> None:
        if self._discarding:
            return
        self._outbox.add_reply(orjson.dumps(reply))
        if self._outbox.replies > MAX_PENDING_REPLIES:
            # Requests keep coming while replies are not read: the client is misbehaving, not just slow.
            self._stats.subscribers_cut_off += 1
            self._end(CLOSE_POLICY_VIOLATION, f"more than {MAX_PENDING_REPLIES} replies unread; read your replies")
        self._nudge()

    def _nudge(self) -> None:
        """Wakes the sender if it waits on its inbox (an empty batch)."""
        if self._idle:
            self._idle = False
            try:
                self._inbox_send.send_nowait(())
            except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
                pass  # full: the sender is woken anyway

    # --- sources -------------------------------------------------------------------------------------------

    def _change_source(self, change: SourceChange) -> None:
        """Creates, changes in place or ends the source subscription of a channel whose symbols changed."""
        buffer = self._limits.source_buffer
        if change.channel == "ticks":
            ticks = self._tick_source
            if change.symbols is not None and not change.symbols:
                self._tick_source = None
                if ticks is not None:
                    self._service.ticks.leave_feed(ticks)
            elif ticks is not None:
                self._service.ticks.change_feed_symbols(ticks, change.symbols)
            else:
                self._tick_source = self._service.ticks.attach_feed(
                    self._name, self._inbox_send.clone(), buffer, change.symbols, self._backlog)
        else:
            interval = change.interval
            assert interval is not None
            candles = self._candle_sources.get(interval)
            if change.symbols is not None and not change.symbols:
                if candles is not None:
                    del self._candle_sources[interval]
                    self._service.candles.leave_candles(interval, candles)
            elif candles is not None:
                self._service.candles.change_symbols(interval, candles, change.symbols)
            else:
                self._candle_sources[interval] = self._service.candles.attach_candles(
                    self._name, self._inbox_send.clone(), buffer, change.symbols, interval, self._backlog)
        self._count_subscribed()

    def _collect(self) -> None:
        """Moves every batch waiting in the inbox into the outbox, then looks for a source that ended."""
        inbox = self._inbox
        try:
            while True:
                self._deliver(inbox.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            pass
        self._check_sources()

    def _deliver(self, batch: InboxBatch) -> None:
        if not batch:
            return  # a nudge
        self._backlog.waiting -= len(batch)
        first = batch[0]
        if isinstance(first, FeedTick):
            self._add_ticks(batch)  # type: ignore[arg-type]
        else:
            self._add_candles(first.interval, batch)  # type: ignore[arg-type]

    def _check_sources(self) -> None:
        """A source that ended cut us off for falling behind, or the service is stopping."""
        if self._close is not None:
            return
        for source in self._sources():
            if source.ended:
                if source.cut_off_reason is not None:
                    self._stats.subscribers_cut_off += 1
                    self._end(CLOSE_TRY_AGAIN_LATER, f"cut off: {source.cut_off_reason}; reconnect and resubscribe")
                else:
                    self._end(CLOSE_GOING_AWAY, "the service is shutting down", discard=False)
                return

    def _sources(self) -> list[Subscriber[FeedTick] | Subscriber[Candle]]:
        return [*([self._tick_source] if self._tick_source is not None else []), *self._candle_sources.values()]

    def _end_sources(self) -> None:
        if self._tick_source is not None:
            self._service.ticks.leave_feed(self._tick_source)
        for interval, source in self._candle_sources.items():
            self._service.candles.leave_candles(interval, source)
        self._tick_source = None
        self._candle_sources.clear()
        self._count_subscribed()

    def _count_subscribed(self) -> None:
        subscribed = self._tick_source is not None or bool(self._candle_sources)
        if subscribed != self._counted_subscribed:
            self._stats.subscribed += 1 if subscribed else -1
            self._counted_subscribed = subscribed

    def _count_subscriptions(self) -> None:
        count = self._subscriptions.count
        self._stats.subscriptions += count - self._counted_subscriptions
        self._counted_subscriptions = count

    # --- the outbox ----------------------------------------------------------------------------------------

    def _add_ticks(self, batch: Sequence[FeedTick]) -> None:
        if self._discarding:
            return
        self._outbox.add_ticks(batch)
        self._grew()

    def _add_candles(self, interval: str, batch: Sequence[Candle]) -> None:
        if self._discarding or not batch:
            return
        self._outbox.add_candles(interval, batch)
        self._grew()

    def _grew(self) -> None:
        pending = self._backlog.held = self._outbox.pending
        if pending > self._limits.max_pending:
            self._stats.subscribers_cut_off += 1
            log.warning("websocket_cut_off client=%s pending=%d limit=%d", self._name, pending,
                        self._limits.max_pending)
            self._end(CLOSE_TRY_AGAIN_LATER,
                      f"cut off: fell behind by more than {self._limits.max_pending} items; reconnect and resubscribe")

    def _end(self, code: int, reason: str, *, discard: bool = True) -> None:
        """Stops feeding this client; the sender closes the connection with ``code`` and ``reason``.

        A client cut off loses what is pending (``discard``); at shutdown the sources end by themselves and
        what they delivered is still sent before the close.
        """
        # A close frame's reason is at most 123 bytes.
        self._close = (code, reason.encode()[:123].decode(errors="ignore"))
        if discard:
            self._discarding = True
            self._end_sources()
            self._outbox.clear()
            self._backlog.held = 0
        self._nudge()

    # --- sending -------------------------------------------------------------------------------------------

    async def _send_loop(self) -> None:
        outbox = self._outbox
        while True:
            self._collect()
            if self._close is not None:
                break
            if not outbox.ready:
                await self._wait_inbox()
                continue
            # The connection is idle: everything waiting goes now; what arrives during the sends waits for them.
            await self._send_pending()
            outbox.sent()
        code, reason = self._close
        with trio.move_on_after(self._limits.close_timeout_seconds):
            if not self._discarding:
                # Shutting down: every source ends; send what they delivered, then close.
                while not all(source.ended for source in self._sources()):
                    await self._wait_inbox()
                self._collect()
                await self._send(self._take())
            await self._websocket.close(code, reason)

    async def _wait_inbox(self) -> None:
        """Waits for the next batch (or nudge) and delivers it."""
        self._idle = True
        try:
            batch = await self._inbox.receive()
        finally:
            self._idle = False
        self._deliver(batch)

    async def _send_pending(self) -> None:
        """Renders what is pending once a send slot is free (what arrives while waiting for one joins the
        frames), then sends it; replies alone need no slot. The slot covers the rendering and one pass of the
        scheduler, which bounds the sessions rendering per pass; not the send itself, because Hypercorn shields a
        socket write, and one to a client that stopped reading would keep the slot for good."""
        outbox = self._outbox
        if not outbox.pending:
            # Replies only (a subscription's acknowledgement, a pong): small, and the client waits for them.
            await self._send(self._take())
            return
        slots = self._send_slots
        try:
            slots.acquire_nowait()  # a free slot costs no extra checkpoint on the quiet path
        except trio.WouldBlock:
            await slots.acquire()
            self._collect()  # what arrived meanwhile joins these frames
        try:
            if self._discarding:
                return
            texts = [self._render(frame) for frame in self._take()]
            await trio.lowlevel.checkpoint()
        finally:
            slots.release()
        for text in texts:
            if self._discarding:
                return
            await self._websocket.send(text)

    def _take(self) -> list[Frame]:
        # Every take follows a ``_collect`` with no checkpoint between: batches published before a change are
        # in the outbox by then, and those after it carry only the new symbols.
        frames = self._outbox.take(self._subscriptions.ticks, self._subscriptions.candles,
                                   recheck_ticks=self._changed_since_take)
        self._changed_since_take = False
        self._backlog.held = 0
        return frames

    async def _send(self, frames: list[Frame]) -> None:
        for frame in frames:
            if self._discarding:
                return
            await self._websocket.send(self._render(frame))

    def _render(self, frame: Frame) -> str:
        if isinstance(frame, bytes):
            return frame.decode()
        stats = self._stats
        if isinstance(frame, TickFrame):
            ticks = frame.ticks
            stats.tick_frames += 1
            stats.ticks_sent += len(ticks)
            lag = time.time() - ticks[-1].event_time_ms / 1000
            stats.last_lag_seconds = lag
            stats.lag_seconds_total += lag
            stats.lag_samples += 1
            return orjson.dumps({"channel": "ticks", "data": [tick.json for tick in ticks]}).decode()
        assert isinstance(frame, CandleFrame)
        stats.candle_frames += 1
        stats.candles_sent += len(frame.candles)
        body = {"channel": "candles", "interval": frame.interval, "data": self._cache.render(frame.candles)}
        return orjson.dumps(body).decode()


async def serve_feed(
    sources: FeedSources, stats: FeedStats, limits: FeedLimits, cache: RenderCache, websocket: Websocket,
    send_slots: trio.CapacityLimiter,
) -> None:
    """The ``/ws`` handler body: accept, then serve the client until it leaves or is cut off. ``send_slots``
    (``limits.concurrent_sends`` tokens) is shared by every client of the app."""
    await websocket.accept()
    number = stats.connections_total
    await FeedSession(sources, stats, limits, cache, websocket, number, send_slots).run()
