"""The WebSocket feed at ``/ws``: clients subscribe to ticks and candles; data is coalesced per wake-up.

Protocol (JSON text frames)::

    → {"op": "subscribe", "channel": "ticks", "symbols": ["BTCUSDT"]}            ("*" or ["*"]: every symbol)
    → {"op": "subscribe", "channel": "candles", "symbols": ["BTCUSDT"], "interval": "1m"}
    → {"op": "unsubscribe", ...the same fields...}
    → {"op": "list"}                                                           (current subscriptions)
    → {"op": "ping"}
    ← {"op": "subscribed" | "unsubscribed", "channel": ..., "symbols": [...], ("interval": ...)}
    ← {"op": "subscriptions", "ticks": [...], "candles": {"1m": [...]}}
    ← {"op": "pong"}
    ← {"channel": "ticks", "data": [tick, ...]}
    ← {"channel": "candles", "interval": "1m", "data": [candle, ...]}
    ← {"op": "error", "code": "...", "message": "..."}                 (the connection stays open)

An ``"id"`` in a client message is echoed in its reply. On a candle subscription the open candle of each symbol
is sent first, then every update: open candles (``"closed": false``), closed ones and revisions.

Per connection: a reader task handles client messages; one pump task per source (the hub's tick channel, the
candle channel of each interval) moves batches into the connection's outbox; one sender task turns everything
pending into as few frames as possible (one per channel per wake-up: outbound frames are the most expensive
thing in the process). A client that does not read lets the outbox grow; past ``FeedLimits.max_pending`` items
it is cut off with close code 1013 and a reason, so it never holds memory or slows anyone else. A connection
with no subscription costs its tasks only: sources are subscribed on demand.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

import attrs
import orjson
import trio
from quart import Websocket

from app.convert import api_converter, quote_frame
from app.model import Candle, Tick
from app.state import ServiceState
from app.store.latest import OverflowPolicy
from app.web.params import SYMBOL_PATTERN
from app.web.symbols import served_symbols

log = logging.getLogger(__name__)

T = TypeVar("T")

# WebSocket close codes (RFC 6455 and IANA registry).
CLOSE_TRY_AGAIN_LATER = 1013
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY_VIOLATION = 1008
# Request ids are echoed; longer ones are refused.
MAX_ID_LENGTH = 64
MAX_PENDING_REPLIES = 1_000
MAX_SYMBOLS_PER_MESSAGE = 1024
# Items per data frame: ~200 bytes per tick keeps frames well under the 1 MiB message limit most clients have.
MAX_ITEMS_PER_FRAME = 2_000


@attrs.frozen(slots=True)
class FeedLimits:
    # Batches a subscription's source channel holds (references to shared batches: cheap); the pump drains it
    # at every frame slot, so this fills only for a client whose outbox is already past ``max_pending``.
    source_buffer: int = 1024
    # Ticks and candle updates waiting for a slow client before it is cut off.
    max_pending: int = 50_000
    # After a cut-off, how long the close frame may take to get through before the connection is dropped.
    close_timeout_seconds: float = 5.0
    # Data frames to one client are at least this far apart (replies are not held back): under load, what
    # arrives meanwhile is coalesced. Adds at most this much latency, and only while data keeps coming.
    min_frame_interval_seconds: float = 0.001
    # ... and at least this far apart once a frame carries ``busy_frame_items`` or more: a trickle (1,000 trades/s)
    # goes out within about a millisecond, while under load each frame gathers more items instead of taking the
    # CPU ingestion needs (a frame costs about the same whatever it holds).
    busy_frame_interval_seconds: float = 0.002
    busy_frame_items: int = 32
    # Data frames per second to all clients together (a frame costs ~100 µs here, Quart + Hypercorn + wsproto):
    # with many subscribed clients their interval grows (N / budget), so the feed never takes the CPU ingestion
    # needs; they get fewer, fuller frames.
    frame_budget_per_second: float = 4_000.0

    # ... but never longer than this (the source buffers must hold what arrives meanwhile).
    max_frame_interval_seconds: float = 0.25

    def frame_interval(self, subscribed_clients: int, frame_items: int = 0) -> float:
        busy = frame_items >= self.busy_frame_items
        floor = self.busy_frame_interval_seconds if busy else self.min_frame_interval_seconds
        interval = max(floor, subscribed_clients / self.frame_budget_per_second)
        return min(interval, self.max_frame_interval_seconds)


@attrs.define
class FeedStats:
    """Plain counters for /metrics, bumped by the feed's tasks."""

    connections: int = 0
    connections_total: int = 0
    # Connections subscribed to at least one channel.
    subscribed: int = 0
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


class RenderCache:
    """Each tick or candle rendered to JSON once, however many subscribers send it.

    Rendering through the API converter costs ~15 µs per tick (mostly the two ISO timestamps); every subscriber
    is handed the same objects by the fan-out, so the first to send one renders it and the others reuse it.
    Keyed by object identity (the entry keeps the object alive, so an id is never reused while cached); cleared
    when full, which bounds memory.
    """

    def __init__(self, capacity: int = 20_000) -> None:
        self._capacity = capacity
        self._rendered: dict[int, tuple[object, orjson.Fragment]] = {}
        self.renders = 0
        self.hits = 0

    def render(self, items: Sequence[Tick] | Sequence[Candle]) -> list[orjson.Fragment]:
        rendered = self._rendered
        fragments = []
        for item in items:
            entry = rendered.get(id(item))
            if entry is not None and entry[0] is item:
                self.hits += 1
                fragments.append(entry[1])
                continue
            fragment = orjson.Fragment(orjson.dumps(api_converter.unstructure(item)))
            if len(rendered) >= self._capacity:
                rendered.clear()
            rendered[id(item)] = (item, fragment)
            self.renders += 1
            fragments.append(fragment)
        return fragments


class ClientError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@attrs.define
class Selection:
    """The symbols one channel is subscribed to: every symbol (``"*"``), a set, or none."""

    everything: bool = False
    symbols: set[str] = attrs.Factory(set)

    @property
    def empty(self) -> bool:
        return not self.everything and not self.symbols

    def source_filter(self) -> frozenset[str] | None:
        return None if self.everything else frozenset(self.symbols)

    def wants(self, symbol: str) -> bool:
        return self.everything or symbol in self.symbols


@attrs.frozen(slots=True)
class Request:
    op: str
    channel: str
    # None: "*".
    symbols: tuple[str, ...] | None
    interval: str | None
    request_id: object


class Pump(Generic[T]):
    """Moves batches from one source channel into the connection's outbox.

    Retiring a pump (unsubscribe, or a changed symbol set) closes its channel at once, so the source stops
    delivering to it, and keeps what was buffered; the pump appends that after any batch it was already handed,
    and the pump replacing it starts only then: batches stay in order, none lost, none twice.

    Each wake-up takes every batch waiting, then the pump rests until the connection's next frame slot
    (``resume_at()``): with many busy clients a pump wakes once per frame, not once per batch.
    """

    def __init__(
        self,
        channel: trio.MemoryReceiveChannel[Sequence[T]],
        deliver: Callable[[Sequence[T]], None],
        on_source_end: Callable[[], None],
        previous: Pump[T] | None,
        resume_at: Callable[[], float],
    ) -> None:
        self._channel = channel
        self._deliver = deliver
        self._on_source_end = on_source_end
        self._previous = previous
        self._resume_at = resume_at
        self._carry: list[Sequence[T]] = []
        self._retired = False
        self.done = trio.Event()

    async def run(self) -> None:
        try:
            if self._previous is not None:
                await self._previous.done.wait()
                self._previous = None
            while True:
                try:
                    self._deliver(await self._channel.receive())
                    while True:
                        self._deliver(self._channel.receive_nowait())
                except trio.WouldBlock:
                    pass
                except trio.ClosedResourceError:
                    break  # retired
                except trio.EndOfChannel:
                    if not self._retired:
                        self._on_source_end()
                    break
                resume_at = self._resume_at()
                if resume_at > trio.current_time():
                    await trio.sleep_until(resume_at)
            for batch in self._carry:
                self._deliver(batch)
            self._carry.clear()
        finally:
            self._channel.close()
            self.done.set()

    def retire(self) -> None:
        self._retired = True
        while True:
            try:
                self._carry.append(self._channel.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
        self._channel.close()


class FeedSession:
    """One WebSocket client: its subscriptions, its outbox, and the tasks that serve it."""

    def __init__(
        self, state: ServiceState, stats: FeedStats, limits: FeedLimits, cache: RenderCache, websocket: Websocket,
        number: int,
    ) -> None:
        self._state = state
        self._stats = stats
        self._cache = cache
        self._limits = limits
        self._websocket = websocket
        self._name = f"ws:{number}"
        self._nursery: trio.Nursery | None = None
        self._tick_selection = Selection()
        self._tick_pump: Pump[Tick] | None = None
        self._candle_selections: dict[str, Selection] = {}
        self._candle_pumps: dict[str, Pump[Candle]] = {}
        # The outbox: replies first, then data, all sent by the sender task.
        self._replies: list[bytes] = []
        self._ticks: list[Tick] = []
        self._candles: dict[str, dict[tuple[str, int], Candle]] = {}
        self._pending = 0
        self._wake = trio.Event()
        self._close: tuple[int, str] | None = None
        self._counted_subscribed = False
        # Set when the client is cut off: nothing more is queued or sent, only the close frame.
        self._discarding = False
        # No data frame before this time (trio clock); see FeedLimits.frame_interval.
        self._next_send_at = 0.0

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
            self._retire_all()
            self._stats.connections -= 1

    # --- reading client messages ---------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        while True:
            message = await self._websocket.receive()
            self._handle(message)

    def _handle(self, message: str | bytes) -> None:
        request_id: object = None
        try:
            if isinstance(message, bytes):
                raise ClientError("invalid_message", "binary frames are not supported; send JSON text")
            try:
                document = orjson.loads(message)
            except orjson.JSONDecodeError as error:
                raise ClientError("invalid_json", f"not valid JSON: {error}") from None
            if not isinstance(document, dict):
                raise ClientError("invalid_message", "expected a JSON object with an \"op\"")
            request_id = document.get("id")
            if request_id is not None and not _valid_id(request_id):
                request_id = None
                raise ClientError("invalid_message", f"id must be an integer or a string of at most {MAX_ID_LENGTH} "
                                                     "characters")
            if document.get("op") == "ping":
                self._reply({"op": "pong"}, request_id)
                return
            if document.get("op") == "list":
                self._reply(self._subscriptions(), request_id)
                return
            request = self._parse_request(document, request_id)
            if request.op == "subscribe":
                self._subscribe(request)
            else:
                self._unsubscribe(request)
        except ClientError as error:
            self._stats.messages_rejected += 1
            self._reply({"op": "error", "code": error.code, "message": error.message}, request_id)

    def _parse_request(self, document: dict[str, Any], request_id: object) -> Request:
        op = document.get("op")
        if op not in ("subscribe", "unsubscribe"):
            raise ClientError("unknown_op", f"unknown op {_shown(op)}; expected subscribe, unsubscribe, list or ping")
        channel = document.get("channel")
        if channel not in ("ticks", "candles"):
            raise ClientError("unknown_channel", f"unknown channel {_shown(channel)}; expected ticks or candles")
        interval = document.get("interval")
        if channel == "ticks":
            if interval is not None:
                raise ClientError("invalid_message", "interval applies to the candles channel only")
        else:
            configured = [interval.name for interval in self._state.settings.candle_intervals]
            if interval not in configured:
                raise ClientError("unknown_interval",
                                  f"unknown interval {_shown(interval)}; configured: {', '.join(configured)}")
        unknown = set(document) - {"op", "channel", "symbols", "interval", "id"}
        if unknown:
            raise ClientError("invalid_message", f"unknown field(s): {_shown(', '.join(sorted(unknown)))}")
        symbols = self._parse_symbols(document.get("symbols"), op == "subscribe")
        return Request(op, channel, symbols, interval, request_id)

    def _parse_symbols(self, value: object, subscribing: bool) -> tuple[str, ...] | None:
        if value == "*" or value == ["*"]:
            return None
        if not isinstance(value, list) or not value:
            raise ClientError("invalid_symbols", 'symbols must be a non-empty list of symbols, or "*"')
        if len(value) > MAX_SYMBOLS_PER_MESSAGE:
            raise ClientError("invalid_symbols", f"at most {MAX_SYMBOLS_PER_MESSAGE} symbols per message")
        symbols: list[str] = []
        for item in value:
            if not isinstance(item, str) or not SYMBOL_PATTERN.match(item.upper()):
                raise ClientError("invalid_symbols", f"{_shown(item)} is not a symbol (e.g. BTCUSDT)")
            symbols.append(item.upper())
        if subscribing:
            served = set(served_symbols(self._state))
            unknown = [symbol for symbol in symbols if symbol not in served]
            if unknown:
                raise ClientError("unknown_symbol",
                                  f"not served: {', '.join(unknown)}; served: {', '.join(sorted(served))}")
        return tuple(dict.fromkeys(symbols))

    def _subscribe(self, request: Request) -> None:
        if request.channel == "ticks":
            selection = self._tick_selection
        else:
            assert request.interval is not None
            selection = self._candle_selections.setdefault(request.interval, Selection())
        before = selection.source_filter() if not selection.empty else frozenset[str]()
        if request.symbols is None:
            selection.everything = True
            selection.symbols.clear()
        elif not selection.everything:
            selection.symbols.update(request.symbols)
        self._ack("subscribed", request)
        if request.channel == "candles":
            assert request.interval is not None
            self._send_open_candles(request.interval, request.symbols)
        if selection.source_filter() != before:
            self._resubscribe(request.channel, request.interval)

    def _unsubscribe(self, request: Request) -> None:
        if request.channel == "ticks":
            selection = self._tick_selection
        else:
            assert request.interval is not None
            selection = self._candle_selections.setdefault(request.interval, Selection())
        if request.symbols is None:
            selection.everything = False
            selection.symbols.clear()
        elif selection.everything:
            raise ClientError("invalid_request",
                              'subscribed to "*": unsubscribe "*", then subscribe the symbols you want')
        else:
            selection.symbols.difference_update(request.symbols)
        self._ack("unsubscribed", request)
        self._resubscribe(request.channel, request.interval)

    def _subscriptions(self) -> dict[str, object]:
        def listed(selection: Selection) -> list[str]:
            return ["*"] if selection.everything else sorted(selection.symbols)

        return {
            "op": "subscriptions",
            "ticks": listed(self._tick_selection),
            "candles": {interval: listed(selection) for interval, selection in self._candle_selections.items()},
        }

    def _ack(self, op: str, request: Request) -> None:
        reply: dict[str, object] = {
            "op": op,
            "channel": request.channel,
            "symbols": ["*"] if request.symbols is None else list(request.symbols),
        }
        if request.interval is not None:
            reply["interval"] = request.interval
        self._reply(reply, request.request_id)

    def _reply(self, reply: dict[str, object], request_id: object) -> None:
        if self._discarding:
            return
        if request_id is not None:
            reply["id"] = request_id
        self._replies.append(orjson.dumps(reply))
        if len(self._replies) > MAX_PENDING_REPLIES:
            # Requests keep coming while replies are not read: the client is misbehaving, not just slow.
            self._stats.subscribers_cut_off += 1
            self._end(CLOSE_POLICY_VIOLATION, f"more than {MAX_PENDING_REPLIES} replies unread; read your replies")
        self._wake.set()

    def _send_open_candles(self, interval: str, symbols: Sequence[str] | None) -> None:
        wanted = served_symbols(self._state) if symbols is None else symbols
        candles = [self._state.candles.open_candle(symbol, interval) for symbol in wanted]
        self._add_candles(interval, [candle for candle in candles if candle is not None])

    # --- sources -------------------------------------------------------------------------------------------

    def _resubscribe(self, channel: str, interval: str | None) -> None:
        """Replaces the source subscription of a channel after its symbol set changed (or ends it)."""
        assert self._nursery is not None
        if channel == "ticks":
            old_ticks = self._tick_pump
            if old_ticks is not None:
                old_ticks.retire()
            self._tick_pump = None
            if not self._tick_selection.empty:
                tick_subscriber, tick_channel = self._state.hub.subscribe(
                    self._name, self._limits.source_buffer, OverflowPolicy.CUT_OFF,
                    symbols=self._tick_selection.source_filter(),
                )
                self._tick_pump = Pump(tick_channel, self._add_ticks,
                                       lambda: self._source_ended(tick_subscriber.cut_off_reason), old_ticks,
                                       self._next_frame_at)
                self._nursery.start_soon(self._tick_pump.run)
            self._count_subscribed()
            return
        assert interval is not None
        old_candles = self._candle_pumps.pop(interval, None)
        if old_candles is not None:
            old_candles.retire()
        selection = self._candle_selections[interval]
        if selection.empty:
            del self._candle_selections[interval]
            self._count_subscribed()
            return
        candle_subscriber, candle_channel = self._state.candles.subscribe_candles(
            self._name, self._limits.source_buffer, OverflowPolicy.CUT_OFF, selection.source_filter(), interval
        )
        pump = Pump(candle_channel, lambda batch: self._add_candles(interval, batch),
                    lambda: self._source_ended(candle_subscriber.cut_off_reason), old_candles, self._next_frame_at)
        self._candle_pumps[interval] = pump
        self._nursery.start_soon(pump.run)
        self._count_subscribed()

    def _count_subscribed(self) -> None:
        subscribed = self._tick_pump is not None or bool(self._candle_pumps)
        if subscribed != self._counted_subscribed:
            self._stats.subscribed += 1 if subscribed else -1
            self._counted_subscribed = subscribed

    def _retire_all(self) -> None:
        if self._tick_pump is not None:
            self._tick_pump.retire()
            self._tick_pump = None
        for pump in self._candle_pumps.values():
            pump.retire()
        self._candle_pumps.clear()
        self._count_subscribed()

    def _source_ended(self, cut_off_reason: str | None) -> None:
        """A source ended our channel: it cut us off for falling behind, or the service is stopping."""
        if self._close is not None:
            return
        if cut_off_reason is not None:
            self._stats.subscribers_cut_off += 1
            self._end(CLOSE_TRY_AGAIN_LATER, f"cut off: {cut_off_reason}; reconnect and resubscribe")
        else:
            self._end(CLOSE_GOING_AWAY, "the service is shutting down", discard=False)

    # --- the outbox ----------------------------------------------------------------------------------------

    def _add_ticks(self, batch: Sequence[Tick]) -> None:
        if self._discarding:
            return
        self._ticks.extend(batch)
        self._grew(len(batch))

    def _add_candles(self, interval: str, batch: Sequence[Candle]) -> None:
        if self._discarding or not batch:
            return
        pending = self._candles.setdefault(interval, {})
        added = 0
        for candle in batch:
            key = (candle.symbol, candle.open_time_ms)
            known = pending.get(key)
            if known is None:
                added += 1
            elif _candle_version(candle) < _candle_version(known):
                continue  # an older state arriving after a newer one (a snapshot): keep the newer
            # Only the latest state of each candle is sent: updates of one open candle coalesce.
            pending[key] = candle
        self._grew(added)

    def _grew(self, added: int) -> None:
        self._pending += added
        if self._pending > self._limits.max_pending:
            self._stats.subscribers_cut_off += 1
            log.warning("websocket_cut_off client=%s pending=%d limit=%d", self._name, self._pending,
                        self._limits.max_pending)
            self._end(CLOSE_TRY_AGAIN_LATER,
                      f"cut off: fell behind by more than {self._limits.max_pending} items; reconnect and resubscribe")
        self._wake.set()

    def _end(self, code: int, reason: str, *, discard: bool = True) -> None:
        """Stops feeding this client; the sender closes the connection with ``code`` and ``reason``.

        A client cut off loses what is pending (``discard``); at shutdown the sources end by themselves and
        what they delivered is still sent before the close.
        """
        # A close frame's reason is at most 123 bytes.
        self._close = (code, reason.encode()[:123].decode(errors="ignore"))
        if discard:
            self._discarding = True
            self._retire_all()
            self._ticks.clear()
            self._candles.clear()
            self._pending = 0
        self._wake.set()

    # --- sending -------------------------------------------------------------------------------------------

    def _next_frame_at(self) -> float:
        return self._next_send_at

    async def _send_loop(self) -> None:
        while self._close is None:
            await self._wake.wait()
            # Data that arrives right after a frame waits for the next slot, gathering what follows: one frame
            # then carries many items. After a quiet spell the first item goes out at once.
            if not self._replies and trio.current_time() < self._next_send_at:
                await trio.sleep_until(self._next_send_at)
            self._wake = trio.Event()
            self._next_send_at = trio.current_time() + self._limits.frame_interval(self._stats.subscribed,
                                                                                   self._pending)
            for frame in self._take_frames():
                if self._discarding:
                    break
                await self._websocket.send(frame)
        code, reason = self._close
        with trio.move_on_after(self._limits.close_timeout_seconds):
            if not self._discarding:
                # Shutting down: every source ends; send what they delivered, then close.
                for pump in [self._tick_pump, *self._candle_pumps.values()]:
                    if pump is not None:
                        await pump.done.wait()
                for frame in self._take_frames():
                    await self._websocket.send(frame)
            await self._websocket.close(code, reason)

    def _take_frames(self) -> list[str]:
        frames = [reply.decode() for reply in self._replies]
        self._replies.clear()
        if self._ticks:
            ticks, self._ticks = self._ticks, []
            selection = self._tick_selection
            if not selection.everything:
                ticks = [tick for tick in ticks if tick.symbol in selection.symbols]
            for start in range(0, len(ticks), MAX_ITEMS_PER_FRAME):
                frames.append(self._tick_frame(ticks[start : start + MAX_ITEMS_PER_FRAME]))
        if self._candles:
            pending, self._candles = self._candles, {}
            for interval, by_key in pending.items():
                interval_selection = self._candle_selections.get(interval)
                if interval_selection is None:
                    continue
                candles = [candle for candle in by_key.values() if interval_selection.wants(candle.symbol)]
                for start in range(0, len(candles), MAX_ITEMS_PER_FRAME):
                    frames.append(self._candle_frame(interval, candles[start : start + MAX_ITEMS_PER_FRAME]))
        self._pending = 0
        return frames

    def _tick_frame(self, ticks: list[Tick]) -> str:
        self._stats.tick_frames += 1
        self._stats.ticks_sent += len(ticks)
        lag = time.time() - ticks[-1].event_time_ms / 1000
        self._stats.last_lag_seconds = lag
        self._stats.lag_seconds_total += lag
        self._stats.lag_samples += 1
        return orjson.dumps({"channel": "ticks", "data": self._cache.render(ticks)}).decode()

    def _candle_frame(self, interval: str, candles: list[Candle]) -> str:
        self._stats.candle_frames += 1
        self._stats.candles_sent += len(candles)
        body = {"channel": "candles", "interval": interval, "data": self._cache.render(candles)}
        return orjson.dumps(body).decode()


def _valid_id(value: object) -> bool:
    if isinstance(value, str):
        return len(value) <= MAX_ID_LENGTH
    return isinstance(value, int) and not isinstance(value, bool)


def _shown(value: object) -> str:
    """A client's value quoted in an error message, shortened."""
    return quote_frame(repr(value))


def _candle_version(candle: Candle) -> tuple[int, bool, int]:
    return candle.revision, candle.closed, candle.trade_count


async def serve_feed(
    state: ServiceState, stats: FeedStats, limits: FeedLimits, cache: RenderCache, websocket: Websocket
) -> None:
    """The ``/ws`` handler body: accept, then serve the client until it leaves or is cut off."""
    await websocket.accept()
    number = stats.connections_total
    await FeedSession(state, stats, limits, cache, websocket, number).run()
