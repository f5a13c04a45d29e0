"""Hot-path changes made for the benchmark (bench/RESULTS.md) keep the reference behaviour."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

from app.model import Tick
from app.store.sqlite import SQLiteStorage
from app.web.feed import FeedLimits


async def test_multi_row_tick_inserts_store_every_tick_once_across_statement_boundaries(tmp_path: Path) -> None:
    storage = await SQLiteStorage.open(str(tmp_path / "db.sqlite3"))
    first = [Tick("BTCUSDT", Decimal("61829.76000000"), Decimal("0.00012000"), 1_000 + n, 1_001 + n, n, n % 2 == 0)
             for n in range(2_500)]
    # A second write overlapping the first: its duplicates are ignored, its new trades added.
    second = first[2_000:] + [Tick("ETHUSDT", Decimal("2683.8"), Decimal("1"), 5_000 + n, 5_000 + n, n, False)
                              for n in range(1_001)]
    await storage.write_ticks(first)
    await storage.write_ticks(second)
    rows = storage._connection.execute(
        "SELECT symbol, COUNT(*), MIN(trade_id), MAX(trade_id) FROM ticks GROUP BY symbol ORDER BY symbol"
    ).fetchall()
    assert rows == [("BTCUSDT", 2_500, 0, 2_499), ("ETHUSDT", 1_001, 0, 1_000)]
    assert await storage.ticks("BTCUSDT", 0, -1, 3_000) == first  # exact round trip, in order
    await storage.close()


def test_feed_frames_follow_a_trickle_within_a_millisecond_and_space_out_under_load() -> None:
    limits = FeedLimits()
    assert limits.frame_interval(1, frame_items=1) == limits.min_frame_interval_seconds == 0.001
    assert limits.frame_interval(1, frame_items=500) == limits.busy_frame_interval_seconds == 0.002
    # The global frame budget still stretches the interval with many subscribed clients.
    assert limits.frame_interval(100, frame_items=1) == 100 / limits.frame_budget_per_second
