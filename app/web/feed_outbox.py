"""What waits to be sent to one ``/ws`` client, and the rule for when and how it goes (no I/O, no clock).

The pacing rule: everything pending goes out the moment the connection is idle; only what arrives while a send
is in flight waits, and it is coalesced into the next frames (one per channel, at most ``max_items_per_frame``
items each). There is no timer between frames: a quiet market gets each trade at once, a busy one gets fewer,
fuller frames because sends take longer than the gaps between trades. Replies go before data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypeVar

import attrs

from app.model import Candle
from app.store.latest import FeedTick
from app.web.feed_protocol import Selection

T = TypeVar("T")

# Items per data frame: ~200 bytes per tick keeps frames well under the 1 MiB message limit most clients have.
MAX_ITEMS_PER_FRAME = 2_000


@attrs.frozen(slots=True)
class TickFrame:
    ticks: Sequence[FeedTick]


@attrs.frozen(slots=True)
class CandleFrame:
    interval: str
    candles: Sequence[Candle]


# A reply (already JSON), or data to render.
Frame = bytes | TickFrame | CandleFrame


class Outbox:
    """Replies, ticks and the latest state of each candle, waiting for one client.

    ``take`` hands over everything pending as frames and marks a send in flight; ``sent`` marks the connection
    idle again. ``ready`` says whether frames should be taken now.
    """

    def __init__(self, max_items_per_frame: int = MAX_ITEMS_PER_FRAME) -> None:
        if max_items_per_frame < 1:
            raise ValueError(f"max_items_per_frame must be at least 1, got {max_items_per_frame}")
        self._max_items = max_items_per_frame
        self._replies: list[bytes] = []
        self._ticks: list[FeedTick] = []
        self._candles: dict[str, dict[tuple[str, int], Candle]] = {}
        # Data items waiting (ticks, and distinct candles).
        self.pending = 0
        self.in_flight = False

    @property
    def replies(self) -> int:
        return len(self._replies)

    @property
    def ready(self) -> bool:
        """Something is waiting and no send is in flight."""
        return not self.in_flight and bool(self._replies or self.pending)

    def add_reply(self, reply: bytes) -> None:
        self._replies.append(reply)

    def add_ticks(self, batch: Sequence[FeedTick]) -> None:
        self._ticks.extend(batch)
        self.pending += len(batch)

    def add_candles(self, interval: str, batch: Sequence[Candle]) -> None:
        """Only the latest state of each candle is kept: updates of one open candle coalesce."""
        waiting = self._candles.setdefault(interval, {})
        for candle in batch:
            key = (candle.symbol, candle.open_time_ms)
            known = waiting.get(key)
            if known is None:
                self.pending += 1
            elif _candle_version(candle) < _candle_version(known):
                continue  # an older state arriving after a newer one (a snapshot): keep the newer
            waiting[key] = candle

    def take(
        self, ticks_wanted: Selection, candles_wanted: Mapping[str, Selection], *, recheck_ticks: bool = True
    ) -> list[Frame]:
        """Everything pending as frames, replies first; marks a send in flight.

        Data the client no longer wants (it unsubscribed after the data was queued) is dropped here. The caller
        passes ``recheck_ticks=False`` when no subscription changed since the last take: the fan-out delivered
        only wanted ticks, and a pass over them all is saved.
        """
        frames: list[Frame] = list(self._replies)
        self._replies.clear()
        if self._ticks:
            ticks, self._ticks = self._ticks, []
            if recheck_ticks and not ticks_wanted.everything:
                symbols = ticks_wanted.symbols
                ticks = [tick for tick in ticks if tick.symbol in symbols]
            frames.extend(TickFrame(part) for part in _parts(ticks, self._max_items))
        if self._candles:
            waiting, self._candles = self._candles, {}
            for interval, by_key in waiting.items():
                selection = candles_wanted.get(interval)
                if selection is None:
                    continue
                candles = [candle for candle in by_key.values() if selection.wants(candle.symbol)]
                frames.extend(CandleFrame(interval, part) for part in _parts(candles, self._max_items))
        self.pending = 0
        self.in_flight = True
        return frames

    def sent(self) -> None:
        """The frames taken last went out: the connection is idle."""
        self.in_flight = False

    def clear(self) -> None:
        """Drops everything waiting (the client was cut off)."""
        self._replies.clear()
        self._ticks.clear()
        self._candles.clear()
        self.pending = 0


def _parts(items: list[T], size: int) -> list[list[T]]:
    return [items[start : start + size] for start in range(0, len(items), size)]


def _candle_version(candle: Candle) -> tuple[int, bool, int]:
    return candle.revision, candle.closed, candle.trade_count
