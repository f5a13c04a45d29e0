"""Start-up recovery: reload recent candles, rebuild open candles from stored ticks, recover lost candles.

For each configured symbol and interval the last ``ring_size`` stored candles are loaded into the builder's
ring; the series continues after the last of them. A long series (``1d``, ``1w``, ``1M``) is brought forward
with the stored closed candles of the configured intervals that tile it (``1M`` from ``1d``, then ``1h``, ...),
so only the finest needs raw ticks. The symbol's stored ticks are then replayed from the earliest point any of
its series needs (ticks already counted in a stored candle are skipped per series). This
rebuilds every open candle exactly and also recomputes closed candles that were emitted but not yet written
when the process died (``kill -9``): they are returned to be stored. The ingest then resumes after the last
stored trade id of each symbol, so the trades missed while down are backfilled and nothing is counted twice.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import attrs

from app.model import Candle
from app.store.candles import CandleBuilder
from app.store.storage import Storage

log = logging.getLogger(__name__)

REPLAY_PAGE = 10_000
# The most finer candles read to rebuild one open candle at one level of its chain.
SEED_LIMIT = 100_000
_BEGINNING = -(2**62)


@attrs.frozen
class Restored:
    # The last stored trade id per symbol: where the ingest resumes.
    resume_from: dict[str, int]
    # Closed candles rebuilt from stored ticks that storage did not have yet (to be written).
    recovered: list[Candle]
    ticks_replayed: int


async def restore(storage: Storage, builder: CandleBuilder, symbols: Sequence[str]) -> Restored:
    """Fills a fresh ``builder`` from ``storage`` for ``symbols`` (call before any tick is fed)."""
    resume_from = await storage.last_trade_ids()
    recovered: list[Candle] = []
    replayed = 0
    for symbol in symbols:
        # Per interval: where its stored candles end (None: none stored).
        starts: dict[str, int | None] = {}
        for interval in builder.intervals:
            recent = await storage.candles(symbol, interval.name, None, None, builder.ring_size(interval))
            builder.seed(symbol, interval.name, recent)
            starts[interval.name] = interval.next_open_time(recent[-1].open_time_ms) if recent else None
        floors: list[int | None] = []
        for interval in builder.intervals:
            # A long open candle (1M) is rebuilt from stored finer candles (1d, then 1h, ...), not from a month
            # of ticks; only the finest interval of the chain needs raw ticks. A series that never closed a
            # candle starts where the finer history starts.
            floor = starts[interval.name]
            for finer in builder.tiling_chain(interval)[1:]:
                finer_start = starts[finer.name]
                if finer_start is None or (floor is not None and finer_start <= floor):
                    break
                parts = await storage.candles(symbol, finer.name, _BEGINNING if floor is None else floor,
                                              finer_start - 1, SEED_LIMIT)
                if len(parts) == SEED_LIMIT:
                    finer_start = finer.next_open_time(parts[-1].open_time_ms)
                recovered.extend(builder.seed_from_finer(symbol, interval.name, parts, finer_start))
                floor = finer_start
            floors.append(floor)
        if symbol not in resume_from:
            continue
        replay_from = _BEGINNING if None in floors else min(floor for floor in floors if floor is not None)
        after_id = -1
        while True:
            page = await storage.ticks(symbol, replay_from, after_id, REPLAY_PAGE)
            if not page:
                break
            recovered.extend(builder.update_many(page))
            replayed += len(page)
            after_id = page[-1].trade_id
    builder.end_replay()
    log.info("restored symbols=%d ticks_replayed=%d candles_recovered=%d", len(symbols), replayed, len(recovered))
    return Restored(resume_from, recovered, replayed)
