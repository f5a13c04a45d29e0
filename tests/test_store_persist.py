"""The persistence tasks: every tick and candle committed, failed writes retried, old ticks pruned."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from functools import partial
from pathlib import Path

import attrs
import trio
from web_harness import wait_until

from app.backoff import Backoff, BackoffPolicy
from app.model import Candle, Tick
from app.store.persist import (
    DAY_MS,
    PersistStatus,
    persist_candles,
    persist_ticks,
    prune_cutoff_ms,
    prune_once,
    prune_ticks,
    until_written,
)
from app.store.sqlite import SQLiteStorage
from app.store.storage import StorageWriteError

T0 = 1_723_161_300_000


def tick(trade_id: int, time_ms: int = T0) -> Tick:
    return Tick("BTCUSDT", Decimal("61829.76"), Decimal("0.0012"), time_ms, time_ms, trade_id, False)


async def test_a_failed_write_is_retried_and_nothing_is_lost_or_reported_early(tmp_path: Path) -> None:
    storage = await SQLiteStorage.open(str(tmp_path / "db.sqlite3"))
    connection = storage._connection
    pages = connection.execute("PRAGMA page_count").fetchone()[0]
    connection.execute(f"PRAGMA max_page_count={pages + 2}")  # a full disk, for real
    status = PersistStatus()
    batches_send, batches_receive = trio.open_memory_channel[Sequence[Tick]](16)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            retry = Backoff(BackoffPolicy(start=0.01, cap=0.1))
            nursery.start_soon(persist_ticks, batches_receive, storage, status, retry)
            for first in range(0, 6000, 1000):
                await batches_send.send([tick(trade_id) for trade_id in range(first, first + 1000)])
            await wait_until(lambda: status.write_failures >= 2)
            assert status.ticks_persisted == 0 and status.last_write_error is not None
            assert "full" in status.last_write_error
            connection.execute("PRAGMA max_page_count=1073741823")  # space again
            await batches_send.aclose()
    assert status.ticks_persisted == 6000 and status.last_write_error is None
    assert status.last_persisted_trade_id == {"BTCUSDT": 5999}
    assert await storage.last_trade_ids() == {"BTCUSDT": 5999}
    await storage.close()


async def test_a_trickle_of_batches_is_written_in_few_transactions_in_order(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    # A quiet market: a one-tick batch every 5 ms for 0.3 s. Each batch in a transaction of its own would be 60
    # writes; group commit starts one at most every COMMIT_INTERVAL_SECONDS (0.1 s).
    storage = await SQLiteStorage.open(str(tmp_path / "db.sqlite3"))
    status = PersistStatus()
    batches_send, batches_receive = trio.open_memory_channel[Sequence[Tick]](256)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(persist_ticks, batches_receive, storage, status, Backoff(BackoffPolicy(start=0.5, cap=30.0)))
        async with batches_send:
            for trade_id in range(60):
                await batches_send.send([tick(trade_id, T0 + trade_id)])
                await trio.sleep(0.005)
    assert status.ticks_persisted == 60
    assert 2 <= status.tick_writes <= 5
    stored = await storage.ticks("BTCUSDT", T0, -1, 100)
    assert [stored_tick.trade_id for stored_tick in stored] == list(range(60))
    await storage.close()


async def test_closed_candles_are_written_in_batches(tmp_path: Path) -> None:
    storage = await SQLiteStorage.open(str(tmp_path / "db.sqlite3"))
    status = PersistStatus()
    candles_send, candles_receive = trio.open_memory_channel[Sequence[Candle]](16)
    one = Decimal(1)
    for minute in range(5):
        open_ms = T0 + minute * 60_000
        candles_send.send_nowait([Candle("BTCUSDT", "1m", open_ms, open_ms + 59_999, one, one, one, one, one, one,
                                         1, one, one, minute, minute, closed=True)])
    candles_send.close()
    await persist_candles(candles_receive, storage, status, Backoff(BackoffPolicy(start=0.5, cap=30.0)))
    assert status.candles_persisted == 5 and status.candle_writes == 1  # drained into one transaction
    assert len(await storage.candles("BTCUSDT", "1m", None, None, 10)) == 5
    await storage.close()


def test_the_prune_cutoff_keeps_the_retention_and_the_ticks_of_open_candles() -> None:
    now = T0 + 30 * DAY_MS
    assert prune_cutoff_ms(now, 7, None) == now - 7 * DAY_MS
    assert prune_cutoff_ms(now, 0.5, None) == now - DAY_MS // 2
    # A 1M candle opened 29 days ago: its ticks stay, whatever the retention.
    assert prune_cutoff_ms(now, 7, now - 29 * DAY_MS) == now - 29 * DAY_MS


async def test_pruning_deletes_only_ticks_before_the_cutoff(tmp_path: Path) -> None:
    storage = await SQLiteStorage.open(str(tmp_path / "db.sqlite3"))
    await storage.write_ticks([tick(trade_id, T0 + trade_id * DAY_MS // 10) for trade_id in range(100)])
    status = PersistStatus()
    assert await prune_once(storage, status, T0 + 5 * DAY_MS) == 50
    assert status.ticks_pruned == 50
    remaining = await storage.ticks("BTCUSDT", 0, -1, 1000)
    assert [t.trade_id for t in remaining] == list(range(50, 100))
    await storage.close()


@attrs.define
class PruneRounds:
    """The prune task's ``newest_trade_ms``: the newest trade the test sets, and how many rounds asked for it."""

    newest_ms: int | None = None
    asked: int = 0

    def newest_trade_ms(self) -> int | None:
        self.asked += 1
        return self.newest_ms

    async def wait_rounds(self, count: int) -> None:
        """Returns once ``count`` more rounds have begun, so the round before them has ended."""
        target = self.asked + count
        await wait_until(lambda: self.asked >= target)


async def test_the_prune_task_counts_back_from_the_newest_trade_and_runs_periodically(tmp_path: Path) -> None:
    storage = await SQLiteStorage.open(str(tmp_path / "db.sqlite3"))
    await storage.write_ticks([tick(day, T0 + day * DAY_MS) for day in range(10)])
    status = PersistStatus()
    rounds = PruneRounds()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(prune_ticks, storage, status, 7, newest_trade_ms=rounds.newest_trade_ms,
                                       keep_from_ms=lambda: None, every_seconds=0.01))
            await rounds.wait_rounds(2)
            assert status.ticks_pruned == 0  # no trade seen yet: nothing to count back from
            rounds.newest_ms = T0 + 9 * DAY_MS
            await rounds.wait_rounds(2)  # a whole round with the trade: it pruned
            assert status.ticks_pruned == 2
            await rounds.wait_rounds(2)  # and the next rounds find nothing more
            nursery.cancel_scope.cancel()
    assert status.ticks_pruned == 2
    assert [t.trade_id for t in await storage.ticks("BTCUSDT", 0, -1, 100)] == list(range(2, 10))
    await storage.close()


async def test_until_written_retries_each_write_failure_with_the_backoff_and_resets_it_after_the_commit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    attempts: list[float] = []
    failures: list[str] = []

    async def write() -> None:
        attempts.append(trio.current_time())
        if len(attempts) <= 3:
            raise StorageWriteError(f"disk full ({len(attempts)})")

    retry = Backoff(BackoffPolicy(start=1.0, cap=4.0, jitter=False))
    await until_written(write, retry, lambda error: failures.append(str(error)))
    assert failures == ["disk full (1)", "disk full (2)", "disk full (3)"]
    # Waits of 1, 2 and 4 s between the tries, then the run of failures is over.
    start = attempts[0]
    assert [round(moment - start, 6) for moment in attempts] == [0.0, 1.0, 3.0, 7.0]
    assert retry.failures == 0
