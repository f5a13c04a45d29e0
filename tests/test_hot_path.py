"""Hot-path changes made for the benchmark (bench/RESULTS.md) keep the reference behaviour."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

from app.model import Tick
from app.store.sqlite import SQLiteStorage


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
