"""Per-symbol trade-id sequencing: every trade exactly once, in id order, holes made visible.

Binance trade ids are consecutive per symbol, so the next id due is always known once one trade was seen.
``TradeSequence`` is pure (no Trio, no I/O): live and backfilled ticks are offered to it in any order and it
returns the ticks that may be emitted now; ticks beyond a hole are held until the hole is filled (by REST
backfill) or given up (``advance_to``, which the caller reports as a ``Gap``).
"""

from __future__ import annotations

from bisect import bisect_left
from operator import attrgetter

import attrs

from app.ingest.status import SymbolStatus
from app.model import Tick

_trade_id = attrgetter("trade_id")


@attrs.define
class TradeSequence:
    symbol: str
    # The next trade id due; None until the first trade (a fresh start without persisted state).
    next_id: int | None
    status: SymbolStatus
    # Ticks with ids above a hole, ascending and unique.
    held: list[Tick] = attrs.Factory(list)
    # No next id known yet, and trades since the subscription may have been missed (a connection was lost
    # before the first trade arrived): ticks are held until ``anchor`` says where the stream starts.
    anchoring: bool = False
    # Resumed from this persisted id and no live trade seen yet: the first one shows whether storage and the
    # exchange agree (a store ahead of the exchange means another venue's ids, e.g. testnet vs live).
    unverified_resume_id: int | None = None
    # The exchange's last trade id as last asked over REST (24hr ticker) after a connection came back or
    # before unsubscribing: ids up to it that were not emitted are a hole even with no later tick held.
    known_last_id: int | None = None

    def offer(self, tick: Tick) -> list[Tick]:
        """The ticks that may be emitted now, in order (``tick`` itself when it is the one due)."""
        trade_id = tick.trade_id
        if self.next_id is None:
            if self.anchoring:
                self._hold(tick)
                return []
            self.next_id = trade_id
        if trade_id == self.next_id:
            self.next_id = trade_id + 1
            ready = [tick]
            if self.held:
                self._release(ready)
            return ready
        if trade_id < self.next_id:
            self.status.duplicates_dropped += 1
            return []
        self._hold(tick)
        return []

    def _hold(self, tick: Tick) -> None:
        held = self.held
        trade_id = tick.trade_id
        if not held or trade_id > held[-1].trade_id:
            held.append(tick)
            return
        index = bisect_left(held, trade_id, key=_trade_id)
        if held[index].trade_id == trade_id:
            self.status.duplicates_dropped += 1
        else:
            held.insert(index, tick)

    def anchor(self, first_id: int) -> list[Tick]:
        """Ends anchoring: the stream starts at ``first_id``. Returns the ticks now releasable."""
        self.anchoring = False
        if self.next_id is not None:
            return []
        self.next_id = first_id
        held = self.held
        if held and held[0].trade_id < first_id:
            del held[: bisect_left(held, first_id, key=_trade_id)]
        ready: list[Tick] = []
        self._release(ready)
        return ready

    def hole(self) -> tuple[int, int] | None:
        """The missing ids ``(first, last)`` before the first held tick, else up to ``known_last_id``;
        None when nothing is known to be missing."""
        if self.next_id is None:
            return None
        if self.held:
            return self.next_id, self.held[0].trade_id - 1
        if self.known_last_id is not None and self.known_last_id >= self.next_id:
            return self.next_id, self.known_last_id
        return None

    def advance_to(self, trade_id: int) -> list[Tick]:
        """Give up the ids below ``trade_id``: they will never be emitted. Returns the ticks now releasable."""
        ready: list[Tick] = []
        if self.next_id is None or trade_id <= self.next_id:
            return ready
        self.next_id = trade_id
        held = self.held
        if held and held[0].trade_id < trade_id:
            del held[: bisect_left(held, trade_id, key=_trade_id)]
        self._release(ready)
        return ready

    def _release(self, ready: list[Tick]) -> None:
        held = self.held
        next_id = self.next_id
        assert next_id is not None
        count = 0
        for tick in held:
            if tick.trade_id != next_id:
                break
            next_id += 1
            count += 1
        if count:
            ready.extend(held[:count])
            del held[:count]
            self.next_id = next_id
