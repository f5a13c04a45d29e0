"""Service health from the state the tasks keep: a pure function of the state and the current Trio time."""

from __future__ import annotations

from typing import Any

import attrs

from app.convert import api_converter
from app.state import ServiceState
from app.store.broadcast import ChannelDepth

# The persistence writer is "behind" when its input holds more than this share of its buffer.
WRITER_BEHIND_SHARE = 0.5
GAPS_SHOWN = 20
# The supervisor's name for the database writer's hub subscription.


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


def assess_health(state: ServiceState, now: float) -> HealthReport:
    """``now`` is ``trio.current_time()``: the clock the ingest tasks stamp frames with."""
    problems: list[Problem] = []
    stale_after = state.settings.stale_after_seconds
    connections = list(state.ingest.connections.values())
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
    for status in state.ingest.symbols.values():
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
    problems.extend(_writer_problems(state))
    problems.extend(_storage_problems(state, now))
    body: dict[str, Any] = {
        "status": "ok" if not problems else "unavailable",
        "reasons": [{"code": problem.code, "message": problem.message} for problem in problems],
        "connections": connection_rows,
        "ticks_published": state.hub.ticks_published,
        # Symbols the exchange stopped (BREAK, delisted): the service is fine, those markets are not trading.
        "stopped_symbols": [{"symbol": status.symbol, "trading_status": status.trading_status}
                            for status in state.ingest.symbols.values() if status.stopped_trading],
        # The newest few; /api/symbols lists them per symbol.
        "unrepaired_gaps": api_converter.unstructure(sorted(
            (gap for status in state.ingest.symbols.values() for gap in status.unrepaired_gaps),
            key=lambda gap: gap.detected_at_ms,
        )[-GAPS_SHOWN:]),
        "storage": _storage_body(state),
    }
    return HealthReport(tuple(problems), body)


def channel_depths(state: ServiceState) -> list[ChannelDepth]:
    """How full the ingest channel and each subscriber channel are (in batches)."""
    depths = [*state.hub.channel_depths(), *state.candles.channel_depths()]
    if state.ingest_backlog is not None:
        depths.insert(0, state.ingest_backlog())
    return depths


def _writer_problems(state: ServiceState) -> list[Problem]:
    if state.persistence is None:
        return []
    depth = state.persistence.depth()
    if depth.used <= depth.size * WRITER_BEHIND_SHARE:
        return []
    return [Problem("writer_behind", f"the database writer has {depth.used} of {depth.size} tick batches pending")]


def _storage_problems(state: ServiceState, now: float) -> list[Problem]:
    persist = state.persist
    if persist.failing_since is None:
        return []
    return [Problem("storage_failed", (
        f"database writes failing for {max(0.0, now - persist.failing_since):.1f} s, retrying with backoff: "
        f"{persist.last_write_error}; held in memory: {persist.ticks_waiting} tick(s), "
        f"{persist.candles_waiting} candle(s); not written: {persist.ticks_unwritten} tick(s), "
        f"{persist.candles_unwritten} candle(s)"))]


def _storage_body(state: ServiceState) -> dict[str, Any]:
    persist = state.persist
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
