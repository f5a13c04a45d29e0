"""What a shard's leader may publish (pure): per symbol, trades strictly after the last published id, no holes.

A standby keeps the recent trades it received (``StandbyBuffer``); when it becomes leader, ``Continuity`` starts
from the bus's last published ids and says, for each batch, which trades are new and which holes must first be
filled over REST (trades the old leader never published and this process never received).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence

import attrs

from app.model import Tick


@attrs.frozen(slots=True)
class Hole:
    symbol: str
    first_trade_id: int
    last_trade_id: int

    @property
    def size(self) -> int:
        return self.last_trade_id - self.first_trade_id + 1


class StandbyBuffer:
    """The most recent trades per symbol, received while not leading (bounded: older ones are fetched back)."""

    def __init__(self, max_per_symbol: int) -> None:
        self._max = max_per_symbol
        self._ticks: dict[str, deque[Tick]] = {}

    def add(self, ticks: Iterable[Tick]) -> None:
        for tick in ticks:
            kept = self._ticks.get(tick.symbol)
            if kept is None:
                kept = self._ticks[tick.symbol] = deque(maxlen=self._max)
            kept.append(tick)

    def drain(self) -> list[Tick]:
        """Everything kept, per symbol in id order, and forgets it."""
        ticks = [tick for kept in self._ticks.values() for tick in kept]
        self._ticks.clear()
        return ticks

    def __len__(self) -> int:
        return sum(len(kept) for kept in self._ticks.values())


class Continuity:
    def __init__(self, published: Mapping[str, int]) -> None:
        self._published = dict(published)

    def last_published(self, symbol: str) -> int | None:
        return self._published.get(symbol)

    def plan(self, ticks: Sequence[Tick]) -> tuple[list[Tick], list[Hole]]:
        """The trades of ``ticks`` not yet published (in order) and, per symbol, the hole before its first one.

        A symbol never published has no hole: its history on the bus starts with its first trade here.
        """
        fresh: list[Tick] = []
        holes: list[Hole] = []
        expected: dict[str, int] = {}
        for tick in ticks:
            symbol = tick.symbol
            last = expected.get(symbol)
            if last is None:
                published = self._published.get(symbol)
                last = tick.trade_id - 1 if published is None else published
                if tick.trade_id > last + 1:
                    holes.append(Hole(symbol, last + 1, tick.trade_id - 1))
            if tick.trade_id <= last:
                continue  # published already (the standby's buffer overlaps the old leader's output)
            if tick.trade_id > last + 1 and symbol in expected:
                holes.append(Hole(symbol, last + 1, tick.trade_id - 1))
            expected[symbol] = tick.trade_id
            fresh.append(tick)
        return fresh, holes

    def catch_up(self, exchange_last_ids: Mapping[str, int], fresh: Sequence[Tick]) -> list[Hole]:
        """Holes up to the exchange's last trade id of symbols with nothing in ``fresh`` (quiet ones: trades
        made while no process led arrive with no live trade after them). Symbols in ``fresh`` are left to the
        stream: what follows their last fresh trade is in flight."""
        streaming = {tick.symbol for tick in fresh}
        holes = []
        for symbol, last_id in exchange_last_ids.items():
            published = self._published.get(symbol)
            if symbol not in streaming and published is not None and last_id > published:
                holes.append(Hole(symbol, published + 1, last_id))
        return holes

    def advance(self, ticks: Iterable[Tick]) -> None:
        """Records ``ticks`` as published."""
        for tick in ticks:
            self._published[tick.symbol] = tick.trade_id

    def skip(self, hole: Hole) -> None:
        """Gives up on ``hole`` (reported as a gap): publishing continues after it."""
        self._published[hole.symbol] = max(self._published.get(hole.symbol, hole.last_trade_id), hole.last_trade_id)
