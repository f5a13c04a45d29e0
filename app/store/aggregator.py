"""The aggregator task around the pure ``CandleBuilder``, and the candle feed the web layer reads.

``aggregate`` takes tick batches from the hub, feeds the builder, closes candles by the clock when a symbol's
feed is live, sends every closed candle and revision to the database writer (``closed_candles``, waiting when it
is full: candles are never dropped), and publishes candle updates to subscribers: closed candles, revisions, and
the open candle of each series a batch touched (coalesced: one update per series per batch).

With ``seeding`` (a pair of channels to the ``seed_candles`` task) the candles that began before the service saw
their trades are completed from the exchange's kline (``CandleBuilder.apply_seed``); they are served
``complete: false`` until then, and for good when the seed fails.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from operator import attrgetter

import attrs
import trio
import trio.lowlevel

from app.clock import wall_clock_ms
from app.intervals import Interval
from app.model import Candle, CandleSeed, SeedRequest, Tick
from app.store.broadcast import Backlog, ChannelDepth, Fanout, OverflowPolicy, Subscriber
from app.store.candles import CandleBuilder, CandleCounters, LateTrade

log = logging.getLogger(__name__)

# A candle is closed by the clock this long after its close time (trades arrive with some latency).
CLOSE_GRACE_MS = 2_000
# How soon to look again at a symbol whose candles are due but whose feed is not live (backfilling).
NOT_LIVE_RECHECK_MS = 1_000
# Tick batches processed before candle updates are published (bounds the latency of updates under load).
MAX_BATCHES_PER_ROUND = 64
# And ticks per round: a round is one step of the task, and a step of seconds (64 batches of a 1 MiB read each)
# would hold up every other task, ingestion's socket reader first.
MAX_TICKS_PER_ROUND = 16_384
# Scheduler rounds an idle aggregator lets pass before working on a fresh batch: the /ws feed got the same batch
# from the fan-out in the same round and puts it on the wire a round or two later (its sender, woken by the batch
# itself; Hypercorn's send lock), so in a quiet market a trade does not wait for candle work first (issue 16;
# bench/RESULTS.md). Three was measured when a pump task sat in front of the sender; one round to spare now.
YIELD_TO_FEED_ROUNDS = 3
# While seeds are outstanding the aggregator looks for answers at least this often (a quiet symbol sends no
# tick to wake it).
SEED_POLL_SECONDS = 0.1


@attrs.frozen
class Seeding:
    """The aggregator's ends of the channels to and from ``seed_candles``."""

    requests: trio.MemorySendChannel[SeedRequest]
    seeds: trio.MemoryReceiveChannel[CandleSeed]


def _never_stopped(symbol: str) -> bool:
    return False


class CandleFeed:
    """The candles the web layer reads (``state.candles``): open candles, recent closed ones, and updates.

    Mutated only by the ``aggregate`` task.
    """

    def __init__(
        self, intervals: Sequence[Interval], *, recent_limit: int | None = None, seed_edges: bool = False
    ) -> None:
        self.builder = CandleBuilder(intervals, recent_limit=recent_limit, seed_edges=seed_edges)
        self._feeds = {interval.name: Fanout[Candle](attrgetter("symbol"), f"candles:{interval.name}")
                       for interval in intervals}
        self.candles_published = 0

    @property
    def intervals(self) -> tuple[Interval, ...]:
        return self.builder.intervals

    @property
    def counters(self) -> CandleCounters:
        return self.builder.counters

    @property
    def revisions(self) -> int:
        return self.builder.counters.revisions

    def open_candle(self, symbol: str, interval: str) -> Candle | None:
        return self.builder.open_candle(symbol, interval)

    def recent_closed(
        self, symbol: str, interval: str, start_ms: int | None, end_ms: int | None, limit: int
    ) -> list[Candle]:
        return self.builder.recent_closed(symbol, interval, start_ms, end_ms, limit)

    def oldest_recent_open_ms(self, symbol: str, interval: str) -> int | None:
        return self.builder.oldest_recent_open_ms(symbol, interval)

    def subscribe_candles(
        self,
        name: str,
        buffer: int,
        policy: OverflowPolicy,
        symbols: frozenset[str] | None,
        interval: str,
    ) -> tuple[Subscriber[Candle], trio.MemoryReceiveChannel[Sequence[Candle]]]:
        """A new subscriber and its batches of candle updates of one interval: closed candles (``closed=True``),
        revisions (``revision > 0``) and open-candle updates (``closed=False``, at most one per series per batch).

        The channel ends when the aggregator stops or cuts the subscriber off (its buffer, in batches, full).
        """
        return self._feed(interval).subscribe(name, buffer, policy, symbols)

    def attach_candles(
        self, name: str, send_channel: trio.MemorySendChannel[Sequence[Candle]], buffer: int,
        symbols: frozenset[str] | None, interval: str, backlog: Backlog | None = None,
    ) -> Subscriber[Candle]:
        """``subscribe_candles`` on a channel the caller opened (a ``/ws`` client's, see ``Fanout.attach``); cut
        off when it or the ``backlog`` is full."""
        return self._feed(interval).attach(name, send_channel, buffer, OverflowPolicy.CUT_OFF, symbols, backlog)

    def leave_candles(self, interval: str, subscriber: Subscriber[Candle]) -> None:
        self._feed(interval).leave(subscriber)

    def change_symbols(self, interval: str, subscriber: Subscriber[Candle], symbols: frozenset[str] | None) -> None:
        """``subscriber`` (of ``interval``) receives ``symbols`` (None: every symbol) from the next update on."""
        self._feed(interval).change_keys(subscriber, symbols)

    def _feed(self, interval: str) -> Fanout[Candle]:
        feed = self._feeds.get(interval)
        if feed is None:
            raise ValueError(f"interval {interval!r} is not configured; configured: {', '.join(self._feeds)}")
        return feed

    @property
    def subscriber_count(self) -> int:
        return sum(len(feed.subscribers) for feed in self._feeds.values())

    @property
    def subscribers_cut_off(self) -> int:
        return sum(feed.cut_off for feed in self._feeds.values())

    def channel_depths(self) -> list[ChannelDepth]:
        return [depth for feed in self._feeds.values() for depth in feed.depths()]

    async def publish(self, changed: Sequence[Candle], touched_symbols: set[str]) -> None:
        """Hands subscribers the closed/revised candles and the open candle of each touched series."""
        for name, feed in self._feeds.items():
            if not feed.subscribers:
                continue
            updates = [candle for candle in changed if candle.interval == name]
            for symbol in touched_symbols:
                if feed.wants(symbol):
                    current = self.builder.open_candle(symbol, name)
                    if current is not None:
                        updates.append(current)
            if updates:
                self.candles_published += len(updates)
                await feed.publish(updates)

    def close(self) -> None:
        for feed in self._feeds.values():
            feed.close()


async def aggregate(
    tick_batches: trio.MemoryReceiveChannel[Sequence[Tick]],
    closed_candles: trio.MemorySendChannel[Sequence[Candle]],
    candles: CandleFeed,
    *,
    is_live: Callable[[str], bool],
    is_stopped: Callable[[str], bool] = _never_stopped,
    clock_ms: Callable[[], int] = wall_clock_ms,
    close_grace_ms: int = CLOSE_GRACE_MS,
    seeding: Seeding | None = None,
    late_trades: trio.MemorySendChannel[Sequence[LateTrade]] | None = None,
) -> None:
    """Runs until ``tick_batches`` ends; then closes ``closed_candles`` and the candle subscribers.

    ``clock_ms`` gives the local wall time in epoch ms (tests drive it from trio's MockClock); ``is_live(symbol)``
    says whether the clock may close that symbol's candles (the supervisor passes ``IngestStatus.is_live``),
    ``is_stopped(symbol)`` whether it stopped trading (``IngestStatus.is_stopped``).

    Candles close by the *exchange's* clock: local time plus the offset between trade event times and the
    local time they were received. Against Binance the offset is the network latency plus clock skew;
    against a replayed recording it is the recording's age, so an old recording replayed in real time still
    closes its candles on time (instead of filling years of empty intervals).
    """
    builder = candles.builder
    next_wake_ms: int | None = None
    # The exchange's clock minus ours: the largest seen, because backfilled trades carry old event times and
    # must not hold the clock back. None until the first trade: nothing closes by the clock before one.
    exchange_offset_ms: int | None = None
    scanned_symbols = 0
    seeds_outstanding = 0
    try:
        async with tick_batches, closed_candles:
            while True:
                changed: list[Candle] = []
                touched: set[str] = set()
                delay = math.inf
                if next_wake_ms is not None and exchange_offset_ms is not None:
                    delay = max(0.0, (next_wake_ms - exchange_offset_ms - clock_ms()) / 1000)
                if seeds_outstanding:
                    delay = min(delay, SEED_POLL_SECONDS)
                batch: Sequence[Tick] | None = None
                # Under load a batch is already waiting: take it without the cost of a cancel scope (and
                # checkpoint at the end of the round instead).
                busy = True
                try:
                    batch = tick_batches.receive_nowait()
                except trio.WouldBlock:
                    busy = False
                except trio.EndOfChannel:
                    break
                if not busy:
                    with trio.move_on_after(delay):
                        try:
                            batch = await tick_batches.receive()
                        except trio.EndOfChannel:
                            break
                    if batch is not None:
                        for _ in range(YIELD_TO_FEED_ROUNDS):
                            await trio.lowlevel.checkpoint()
                if batch is not None:
                    latest_event_ms = _feed(builder, batch, changed, touched)
                    fed = len(batch)
                    # Drain what else is waiting: ticks first, so queued trades are not mistaken for late ones.
                    for _ in range(MAX_BATCHES_PER_ROUND - 1):
                        if fed >= MAX_TICKS_PER_ROUND:
                            break
                        try:
                            batch = tick_batches.receive_nowait()
                        except (trio.WouldBlock, trio.EndOfChannel):
                            break
                        fed += len(batch)
                        latest_event_ms = max(latest_event_ms, _feed(builder, batch, changed, touched))
                    offset = latest_event_ms - clock_ms()
                    exchange_offset_ms = offset if exchange_offset_ms is None else max(exchange_offset_ms, offset)
                if exchange_offset_ms is not None:
                    exchange_now_ms = clock_ms() + exchange_offset_ms
                    # Scanning every series costs symbols x intervals: only when something may be due. Close
                    # times only move forward, so the last minimum stays a lower bound until a symbol is added.
                    symbol_count = builder.symbol_count
                    if next_wake_ms is None or exchange_now_ms >= next_wake_ms or symbol_count != scanned_symbols:
                        scanned_symbols = symbol_count
                        next_wake_ms = close_by_clock(builder, exchange_now_ms, close_grace_ms, is_live, is_stopped,
                                                       changed, touched)
                if seeding is not None:
                    seeds_outstanding += exchange_seeds(builder, seeding, changed, touched)
                late = builder.take_late_trades()
                if late and late_trades is not None:
                    await late_trades.send(late)
                if changed:
                    await closed_candles.send(changed)
                await candles.publish(changed, touched)
                if busy:
                    await trio.lowlevel.checkpoint()
    finally:
        if late_trades is not None:
            late_trades.close()
        if seeding is not None:
            seeding.requests.close()
            seeding.seeds.close()
        candles.close()


def exchange_seeds(builder: CandleBuilder, seeding: Seeding, changed: list[Candle], touched: set[str]) -> int:
    """Sends the builder's new seed requests and applies the seeds that arrived; returns the change in the number
    of seeds outstanding."""
    delta = 0
    for request in builder.take_seed_requests():
        try:
            seeding.requests.send_nowait(request)
            delta += 1
        except (trio.WouldBlock, trio.BrokenResourceError):
            changed.extend(builder.apply_seed(CandleSeed(request.symbol, request.interval, request.open_time_ms,
                                                         None, "too many seeds waiting")))
    while True:
        try:
            seed = seeding.seeds.receive_nowait()
        except (trio.WouldBlock, trio.EndOfChannel):
            return delta
        delta -= 1
        changed.extend(builder.apply_seed(seed))
        touched.add(seed.symbol)


def _feed(builder: CandleBuilder, batch: Sequence[Tick], changed: list[Candle], touched: set[str]) -> int:
    """Feeds a batch; returns the latest event time in it."""
    changed.extend(builder.update_many(batch))
    latest_event_ms = 0
    for tick in batch:
        touched.add(tick.symbol)
        if tick.event_time_ms > latest_event_ms:
            latest_event_ms = tick.event_time_ms
    return latest_event_ms


def close_by_clock(
    builder: CandleBuilder,
    now_ms: int,
    grace_ms: int,
    is_live: Callable[[str], bool],
    is_stopped: Callable[[str], bool],
    changed: list[Candle],
    touched: set[str],
) -> int | None:
    """Closes due candles of live and stopped symbols; returns when to look again (epoch ms; None: nothing open)."""
    next_wake: int | None = None
    for symbol in builder.symbols:
        close_ms = builder.next_close_ms(symbol)
        if close_ms is None:
            continue
        due_ms = close_ms + grace_ms
        if due_ms <= now_ms:
            if is_stopped(symbol):
                changed.extend(builder.close_due(symbol, now_ms - grace_ms + 1, stopped=True))
                touched.add(symbol)
                close_ms = builder.next_close_ms(symbol)
                if close_ms is None:
                    continue
                due_ms = close_ms + grace_ms
            elif is_live(symbol):
                closed = builder.close_due(symbol, now_ms - grace_ms + 1)
                changed.extend(closed)
                touched.add(symbol)
                close_ms = builder.next_close_ms(symbol)
                assert close_ms is not None
                due_ms = close_ms + grace_ms
            else:
                due_ms = now_ms + NOT_LIVE_RECHECK_MS
        next_wake = due_ms if next_wake is None else min(next_wake, due_ms)
    return next_wake
