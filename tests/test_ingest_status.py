"""What ingest says about its symbols and connections (read by health, metrics and the aggregator)."""

from __future__ import annotations

import trio
import trio.testing

from app.ingest.status import ConnectionStatus, GapNotices, IngestStatus
from app.model import Gap


def test_a_feed_is_live_only_when_connected_not_backfilling_and_trading() -> None:
    status = IngestStatus()
    assert not status.is_live("BTCUSDT")
    symbol = status.symbol("BTCUSDT")
    symbol.last_tick_at = 1.0
    assert not status.is_live("BTCUSDT")  # no connection up
    status.connections["shard-0"] = ConnectionStatus("shard-0", "ws://x", connected=True)
    assert status.is_live("BTCUSDT")
    symbol.backfilling = True
    assert not status.is_live("BTCUSDT")


def test_a_feed_is_stopped_when_its_symbol_stopped_trading_and_is_not_backfilling() -> None:
    status = IngestStatus()
    assert not status.is_stopped("BTCUSDT")
    symbol = status.symbol("BTCUSDT")
    assert not status.is_stopped("BTCUSDT")
    symbol.trading_status = "BREAK"
    assert status.is_stopped("BTCUSDT")
    symbol.backfilling = True  # trades from before the stop may still come
    assert not status.is_stopped("BTCUSDT")
    symbol.backfilling = False
    symbol.trading_status = "DELISTED"
    assert status.is_stopped("BTCUSDT")


def test_gap_notices_give_each_reader_the_gaps_after_what_it_has_seen_within_what_is_kept() -> None:
    notices = GapNotices(kept=3)
    gaps = [Gap("BTCUSDT", first, first, "lost", 0) for first in range(1, 6)]
    notices.add(gaps[0])
    seen = notices.recorded
    notices.add(gaps[1])
    assert notices.since(seen) == [gaps[1]]
    assert notices.since(notices.recorded) == []
    for gap in gaps[2:]:
        notices.add(gap)
    assert notices.since(0) == gaps[2:]  # the oldest two are no longer kept


async def test_a_gap_recorded_for_a_symbol_wakes_the_readers_of_the_notices() -> None:
    status = IngestStatus()
    gap = Gap("ETHUSDT", 7, 9, "lost", 0)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(status.gap_notices.wait_after, 0)
            await trio.testing.wait_all_tasks_blocked()
            status.symbol("ETHUSDT").record_gap(gap)
    assert status.gap_notices.since(0) == [gap]
