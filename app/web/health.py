"""Service health from the status the tasks keep: a pure function of ``HealthSources`` and the current Trio time."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from app.convert import api_converter
from app.ingest.status import IngestStatus
from app.store.broadcast import ChannelDepth
from app.store.latest import TickHub
from app.store.persist import PersistStatus

# The persistence writer is "behind" when its input holds more than this share of its buffer.
WRITER_BEHIND_SHARE = 0.5
GAPS_SHOWN = 20


@attrs.frozen
class HealthSources:
    """What /health reads, each owned by its task: ingest (connections and symbols), the hub (ticks
    published), the database writers (what is committed, what waits) and the writer's input channel."""

    ingest: IngestStatus
    ticks: TickHub
    persist: PersistStatus
    stale_after_seconds: float
    # How full the database writer's hub subscription is (None without a writer in this process).
    writer_depth: Callable[[], ChannelDepth] | None = None


@attrs.frozen(slots=True)
class Problem:
    # One of: disconnected, stalled, backfilling, unrepaired_gap, writer_behind, storage_failed.
    code: str
    message: str


@attrs.frozen(slots=True)
class HealthReport:
    problems: tuple[Problem, ...]
    body: dict[str, Any]

    @property
    def ok(self) -> bool:
        return not self.problems


def assess_health(sources: HealthSources, now: float) -> HealthReport:
    """``now`` is ``trio.current_time()``: the clock the ingest tasks stamp frames with."""
    problems: list[Problem] = []
    stale_after = sources.stale_after_seconds
    connections = list(sources.ingest.connections.values())
    if not connections:
        problems.append(Problem("disconnected", "no exchange connection yet"))
    connection_rows = []
    for connection in connections:
        age = None if connection.last_frame_at is None else max(0.0, now - connection.last_frame_at)
        if not connection.connected:
            problems.append(Problem("disconnected", f"connection {connection.name} to {connection.url} is down"))
        elif connection.streams and (age is None or age > stale_after):
            silent = "no frame yet" if age is None else f"no frame for {age:.1f} s"
            problems.append(Problem("stalled", f"connection {connection.name}: {silent} (limit {stale_after:g} s)"))
        connection_rows.append({
            "name": connection.name,
            "connected": connection.connected,
            "streams": connection.streams,
            "last_frame_age_seconds": None if age is None else round(age, 3),
            "reconnects": connection.reconnects,
        })
    for status in sources.ingest.symbols.values():
        if status.backfilling and status.subscribed:
            problems.append(Problem("backfilling", f"{status.symbol} is backfilling missed trades"))
        if status.unrepaired_gaps:
            latest = status.unrepaired_gaps[-1]
            count = max(status.gaps_unrepaired, len(status.unrepaired_gaps))
            lost = max(status.trades_lost, sum(gap.missing_count for gap in status.unrepaired_gaps))
            problems.append(Problem(
                "unrepaired_gap",
                f"{status.symbol}: {count} unrepaired gap(s), {lost} trade(s) missing; latest "
                f"{latest.first_trade_id}..{latest.last_trade_id}: {latest.reason}",
            ))
    problems.extend(_writer_problems(sources.writer_depth))
    problems.extend(_storage_problems(sources.persist, now))
    body: dict[str, Any] = {
        "status": "ok" if not problems else "unavailable",
        "reasons": [{"code": problem.code, "message": problem.message} for problem in problems],
        "connections": connection_rows,
        "ticks_published": sources.ticks.ticks_published,
        # Symbols the exchange stopped (BREAK, delisted): the service is fine, those markets are not trading.
        "stopped_symbols": [{"symbol": status.symbol, "trading_status": status.trading_status}
                            for status in sources.ingest.symbols.values() if status.stopped_trading],
        # The newest few; /api/symbols lists them per symbol.
        "unrepaired_gaps": api_converter.unstructure(sorted(
            (gap for status in sources.ingest.symbols.values() for gap in status.unrepaired_gaps),
            key=lambda gap: gap.detected_at_ms,
        )[-GAPS_SHOWN:]),
        "storage": _storage_body(sources.persist),
    }
    return HealthReport(tuple(problems), body)


def _writer_problems(writer_depth: Callable[[], ChannelDepth] | None) -> list[Problem]:
    if writer_depth is None:
        return []
    depth = writer_depth()
    if depth.used <= depth.size * WRITER_BEHIND_SHARE:
        return []
    return [Problem("writer_behind", f"the database writer has {depth.used} of {depth.size} tick batches pending")]


def _storage_problems(persist: PersistStatus, now: float) -> list[Problem]:
    if persist.failing_since is None:
        return []
    return [Problem("storage_failed", (
        f"database writes failing for {max(0.0, now - persist.failing_since):.1f} s, retrying with backoff: "
        f"{persist.last_write_error}; held in memory: {persist.ticks_waiting} tick(s), "
        f"{persist.candles_waiting} candle(s); not written: {persist.ticks_unwritten} tick(s), "
        f"{persist.candles_unwritten} candle(s)"))]


def _storage_body(persist: PersistStatus) -> dict[str, Any]:
    return {
        "failing": persist.failing_since is not None,
        "last_error": persist.last_write_error,
        "ticks_waiting": persist.ticks_waiting,
        "candles_waiting": persist.candles_waiting,
        # Missing from the database (served from memory while they lasted); ranges by symbol.
        "ticks_unwritten": persist.ticks_unwritten,
        "candles_unwritten": persist.candles_unwritten,
        "unwritten_trade_ids": {symbol: [{"first_trade_id": first, "last_trade_id": last}
                                         for first, last in ranges[-GAPS_SHOWN:]]
                                for symbol, ranges in persist.unwritten_trade_ids.items()},
    }
