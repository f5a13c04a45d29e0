"""The shard publisher: the one task between a shard's ingest and the bus.

    stream_trades ──ticks──▶ ┐
    campaign ──leadership──▶ ┴ events ──▶ publish_shard ──fenced script──▶ Redis (ticks, candles, resume points)

As standby it keeps the recent trades (``StandbyBuffer``) and publishes nothing. On becoming leader it reads
the last published trade id per symbol and the current candle of every series from the bus, continues those
candles, fills the holes between what was published and what it holds over REST, and publishes; from then on
every batch goes out with its candle updates in one atomic, fenced step. When the fence refuses it (another
process holds the lease) it is a standby again at once.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import attrs
import trio

from app.bus.connection import BUS_UNAVAILABLE
from app.bus.continuity import Continuity, Hole, StandbyBuffer
from app.bus.keys import BusKeys
from app.bus.publish import BusPublisher, Fenced, decode_hash, last_trade_ids, series_field
from app.clock import wall_clock_ms
from app.convert import candles_from_bus
from app.ingest.rest import RestError
from app.intervals import Interval
from app.model import Candle, Tick
from app.store.aggregator import CLOSE_GRACE_MS, close_by_clock
from app.store.candles import CandleBuilder

log = logging.getLogger(__name__)

# Trades kept per symbol by a standby: a few seconds of the busiest symbol, so a takeover rarely needs REST.
STANDBY_TRADES_PER_SYMBOL = 50_000
BUS_RETRY_SECONDS = 0.2
# The most ticks merged into one publish from batches waiting behind each other.
MAX_MERGED_TICKS = 2_000

# Fetches trades first..last (inclusive) of a symbol over REST, in id order.
FetchTrades = Callable[[str, int, int], Awaitable[list[Tick]]]
# The exchange's last trade id of each of the shard's symbols (the 24hr ticker's lastId).
LastTradeIds = Callable[[], Awaitable[dict[str, int]]]


@attrs.define
class ShardStatus:
    leading: bool = False
    takeovers: int = 0
    fenced: int = 0
    ticks_published: int = 0
    batches_published: int = 0
    holes_filled: int = 0
    trades_fetched: int = 0
    # Trades no process could publish (REST refused or too many): reported, never silently skipped.
    trades_unpublished: int = 0
    bus_errors: int = 0
    # Trades for closed candles older than a leader holds (published as ticks, their candle not revised).
    late_trades_unrevised: int = 0


@attrs.frozen
class ShardBus:
    redis: Any
    keys: BusKeys
    lease_key: str
    token: str
    max_entries: int


async def publish_shard(
    events: trio.MemoryReceiveChannel[list[Tick] | bool],
    bus: ShardBus,
    intervals: Sequence[Interval],
    fetch_trades: FetchTrades,
    exchange_last_ids: LastTradeIds,
    status: ShardStatus,
    *,
    max_hole_trades: int,
    is_live: Callable[[str], bool],
    clock_ms: Callable[[], int] = wall_clock_ms,
) -> None:
    """Runs until ``events`` ends: batches of ticks from ingest, and True/False as leadership is won or lost.

    ``is_live(symbol)``: whether the clock may close the symbol's candles (its trades are not held back by a
    repair, a connection is up): else trades of a candle closed by the clock would still be on their way."""
    publisher = BusPublisher(bus.redis, bus.keys, bus.lease_key, bus.token, bus.max_entries)
    buffer = StandbyBuffer(STANDBY_TRADES_PER_SYMBOL)
    leader: _Leading | None = None
    held: bool | None = None  # a leadership change found behind merged batches, handled next
    async with events:
        while True:
            delay = math.inf if leader is None else leader.seconds_to_next_close(clock_ms())
            event: list[Tick] | bool | None = held
            held = None
            if event is None:
                with trio.move_on_after(delay):
                    try:
                        event = await events.receive()
                    except trio.EndOfChannel:
                        break
            if isinstance(event, list) and leader is not None:
                event, held = _with_waiting(events, event)
            catch_up: dict[str, int] = {}
            try:
                if event is True and leader is None:
                    leader = await _take_over(bus, intervals, is_live, status)
                    status.leading = True
                    event = buffer.drain()
                    catch_up = await _exchange_last_ids(exchange_last_ids)
                elif event is False:
                    if leader is not None:
                        log.warning("leadership lost: standing by")
                    leader = None
                    status.leading = False
                    continue
                if leader is None:
                    if isinstance(event, list):
                        buffer.add(event)
                    continue
                ticks = event if isinstance(event, list) else []
                await leader.publish(ticks, publisher, fetch_trades, max_hole_trades, clock_ms(), status, catch_up)
            except Fenced as refused:
                status.fenced += 1
                log.error("publish refused, another process leads the shard: %s", refused)
                if isinstance(event, list) and leader is not None:
                    buffer.add(event)
                leader = None
                status.leading = False


def _with_waiting(
    events: trio.MemoryReceiveChannel[list[Tick] | bool], ticks: list[Tick]
) -> tuple[list[Tick], bool | None]:
    """``ticks`` and the tick batches already waiting behind them (up to ``MAX_MERGED_TICKS``), and the leadership
    change that stopped the merge, if one did: one fenced publish costs about as much for 2 ticks as for 500, so
    a leader that falls behind publishes what piled up at once instead of one socket read at a time."""
    merged = list(ticks)
    while len(merged) < MAX_MERGED_TICKS:
        try:
            event = events.receive_nowait()
        except (trio.WouldBlock, trio.EndOfChannel):
            break
        if isinstance(event, bool):
            return merged, event
        merged.extend(event)
    return merged, None


class _Leading:
    """A leader's state: what was published, and the candles it continues."""

    def __init__(self, continuity: Continuity, builder: CandleBuilder, is_live: Callable[[str], bool]) -> None:
        self.continuity = continuity
        self.builder = builder
        self.is_live = is_live
        self.next_close_ms: int | None = None
        # The exchange's clock minus ours (see ``app.store.aggregator.aggregate``).
        self.exchange_offset_ms: int | None = None

    def seconds_to_next_close(self, now_ms: int) -> float:
        if self.next_close_ms is None or self.exchange_offset_ms is None:
            return math.inf
        return max(0.0, (self.next_close_ms - self.exchange_offset_ms - now_ms) / 1000)

    async def publish(
        self,
        ticks: list[Tick],
        publisher: BusPublisher,
        fetch_trades: FetchTrades,
        max_hole_trades: int,
        now_ms: int,
        status: ShardStatus,
        exchange_last_ids: dict[str, int],
    ) -> None:
        fresh, holes = self.continuity.plan(ticks)
        holes += self.continuity.catch_up(exchange_last_ids, fresh)
        if holes:
            fresh = await self._fill(holes, fresh, fetch_trades, max_hole_trades, status)
        changed = self.builder.update_many(fresh)
        touched = {tick.symbol for tick in fresh}
        if fresh:
            offset = max(tick.event_time_ms for tick in fresh) - now_ms
            self.exchange_offset_ms = offset if self.exchange_offset_ms is None else max(self.exchange_offset_ms,
                                                                                          offset)
        if self.exchange_offset_ms is not None:
            self.next_close_ms = close_by_clock(self.builder, now_ms + self.exchange_offset_ms, CLOSE_GRACE_MS,
                                                self.is_live, lambda symbol: False, changed, touched)
        self._count_unrevised(status)
        candles = [*changed, *self._open_candles(touched)]
        if not fresh and not candles:
            return
        states = self._states(touched)
        while True:
            try:
                await publisher.publish(fresh, candles, states)
                break
            except BUS_UNAVAILABLE as error:
                # Hold the batch (ingest waits behind it); a lease lost meanwhile makes the retry Fenced.
                status.bus_errors += 1
                log.warning("bus unreachable, retrying the batch error=%s", error)
                await trio.sleep(BUS_RETRY_SECONDS)
        self.continuity.advance(fresh)
        status.ticks_published += len(fresh)
        status.batches_published += 1

    def _open_candles(self, symbols: set[str]) -> list[Candle]:
        return [candle for symbol in symbols for interval in self.builder.intervals
                if (candle := self.builder.open_candle(symbol, interval.name)) is not None]

    def _states(self, symbols: set[str]) -> dict[str, list[Candle]]:
        """What a successor continues for each series of ``symbols``: its open candle and the closed ones late
        trades may still revise, so its revisions of them are higher than any published."""
        return {series_field(symbol, interval.name): self.builder.unsettled(symbol, interval.name)
                for symbol in symbols for interval in self.builder.intervals}

    def _count_unrevised(self, status: ShardStatus) -> None:
        late = self.builder.take_late_trades()
        if late:
            status.late_trades_unrevised += len(late)
            log.warning("late trades for candles this leader does not hold, not revised trades=%d first=%s %d",
                        len(late), late[0].tick.symbol, late[0].tick.trade_id)

    async def _fill(
        self, holes: list[Hole], fresh: list[Tick], fetch_trades: FetchTrades, max_hole_trades: int,
        status: ShardStatus,
    ) -> list[Tick]:
        """The trades of the holes (fetched) placed before each symbol's fresh ones; holes that cannot be
        filled are reported and skipped."""
        filled: dict[str, list[Tick]] = {}
        for hole in holes:
            trades: list[Tick] = []
            if hole.size <= max_hole_trades:
                try:
                    trades = await fetch_trades(hole.symbol, hole.first_trade_id, hole.last_trade_id)
                except RestError as error:
                    log.error("hole not filled symbol=%s trades=%d..%d error=%s", hole.symbol,
                              hole.first_trade_id, hole.last_trade_id, error)
            got = [t for t in trades if hole.first_trade_id <= t.trade_id <= hole.last_trade_id]
            if len(got) != hole.size:
                status.trades_unpublished += hole.size - len(got)
                log.error("trades not published symbol=%s trades=%d..%d missing=%d", hole.symbol,
                          hole.first_trade_id, hole.last_trade_id, hole.size - len(got))
                self.continuity.skip(hole)
            else:
                status.holes_filled += 1
                status.trades_fetched += len(got)
            filled.setdefault(hole.symbol, []).extend(got)
        # Each symbol's trades in id order: a hole inside the batch is filled in its place, not before the live
        # trades preceding it (readers drop a trade id below one they have seen as a repeat).
        per_symbol: dict[str, list[Tick]] = {}
        for tick in fresh:
            per_symbol.setdefault(tick.symbol, []).append(tick)
        for symbol, trades in filled.items():
            per_symbol[symbol] = sorted([*per_symbol.get(symbol, []), *trades], key=lambda tick: tick.trade_id)
        # Quiet symbols caught up to the exchange's last trade come after the streaming ones.
        return [tick for trades in per_symbol.values() for tick in trades]


async def _exchange_last_ids(exchange_last_ids: LastTradeIds) -> dict[str, int]:
    try:
        return await exchange_last_ids()
    except RestError as error:
        # Quiet symbols then catch up with their next live trade (the hole before it is filled then).
        log.warning("exchange last trade ids not fetched at takeover error=%s", error)
        return {}


async def _take_over(
    bus: ShardBus, intervals: Sequence[Interval], is_live: Callable[[str], bool], status: ShardStatus
) -> _Leading:
    """The leader's starting point, from the bus: last published ids and, per series, the candles published
    that trades may still change (the current one, and closed ones the clock may have closed early)."""
    while True:
        try:
            published = await last_trade_ids(bus.redis, bus.keys)
            candle_state = decode_hash(await bus.redis.hgetall(bus.keys.candle_state))
            break
        except BUS_UNAVAILABLE as error:
            log.warning("bus unreachable at takeover, retrying error=%s", error)
            await trio.sleep(BUS_RETRY_SECONDS)
    builder = CandleBuilder(intervals)
    configured = {interval.name for interval in intervals}
    for payload in candle_state.values():
        for candle in candles_from_bus(payload):
            if candle.interval in configured:
                builder.continue_candle(candle)
    status.takeovers += 1
    log.warning("leading the shard symbols_published=%d candles_continued=%d", len(published), len(candle_state))
    return _Leading(Continuity(published), builder, is_live)
