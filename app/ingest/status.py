"""What ingestion knows about its own health: read by /health, /api/symbols and /metrics.

Mutated only by the ingest tasks; plain counters (not Prometheus objects) so the hot path pays nothing;
the web layer turns them into metrics when scraped.
"""

from __future__ import annotations

from collections import deque

import attrs
import trio

from app.model import Gap

# Unrepaired gaps kept per symbol for the health endpoint (the counters keep the full totals).
GAPS_KEPT = 1000


class GapNotices:
    """Unrepaired gaps in the order they are recorded, for readers that tell others (the /ws feed's sessions).

    Gaps are rare, so a bounded log and one event are enough: a reader remembers how many it has seen
    (``recorded``), waits for more and takes ``since(seen)``; one that fell further behind than ``kept`` gaps gets
    the newest ones only.
    """

    def __init__(self, kept: int = GAPS_KEPT) -> None:
        self.recorded = 0
        self._recent: deque[Gap] = deque(maxlen=kept)
        self._changed = trio.Event()

    def add(self, gap: Gap) -> None:
        self._recent.append(gap)
        self.recorded += 1
        self._changed.set()
        self._changed = trio.Event()

    def since(self, seen: int) -> list[Gap]:
        """The gaps recorded after the first ``seen`` (those still kept)."""
        newer = min(self.recorded - seen, len(self._recent))
        return list(self._recent)[len(self._recent) - newer:] if newer > 0 else []

    async def wait_after(self, seen: int) -> None:
        """Returns once more than ``seen`` gaps have been recorded."""
        while self.recorded <= seen:
            await self._changed.wait()


@attrs.define
class SymbolStatus:
    symbol: str
    last_trade_id: int | None = None
    # trio.current_time() when the last tick of this symbol arrived (None: none yet).
    last_tick_at: float | None = None
    ticks_received: int = 0
    ticks_emitted: int = 0
    duplicates_dropped: int = 0
    gaps_found: int = 0
    gaps_repaired: int = 0
    trades_backfilled: int = 0
    backfilling: bool = False
    # Gaps that could not be repaired; never silently forgotten (the newest GAPS_KEPT; totals below).
    unrepaired_gaps: list[Gap] = attrs.Factory(list)
    gaps_unrepaired: int = 0
    trades_lost: int = 0
    # False once the symbol was unsubscribed (the entry is kept for its history).
    subscribed: bool = True
    # Binance's status from exchangeInfo (``TRADING``, ``BREAK`` ...), or ``DELISTED`` once it is not listed.
    trading_status: str = "TRADING"
    # Where every unrepaired gap is also told (the IngestStatus's, for the /ws feed); None: nowhere.
    notices: GapNotices | None = attrs.field(default=None, eq=False, repr=False)

    @property
    def stopped_trading(self) -> bool:
        return self.trading_status != "TRADING"

    def record_gap(self, gap: Gap) -> None:
        self.unrepaired_gaps.append(gap)
        if len(self.unrepaired_gaps) > GAPS_KEPT:
            del self.unrepaired_gaps[: len(self.unrepaired_gaps) - GAPS_KEPT]
        self.gaps_unrepaired += 1
        self.trades_lost += gap.missing_count
        if self.notices is not None:
            self.notices.add(gap)


@attrs.define
class ConnectionStatus:
    name: str
    url: str
    streams: int = 0
    connected: bool = False
    # trio.current_time() of the last frame received on this connection.
    last_frame_at: float | None = None
    reconnects: int = 0
    # trio.current_time() when the current connection opened.
    connected_at: float | None = None
    frames_received: int = 0
    control_messages_sent: int = 0
    # Bytes read from the socket ahead of the pipeline, as of the last batch it took (a backlog, not a leak:
    # bounded by the socket's max_read_ahead_bytes).
    read_ahead_bytes: int = 0


@attrs.define
class IngestStatus:
    symbols: dict[str, SymbolStatus] = attrs.Factory(dict)
    connections: dict[str, ConnectionStatus] = attrs.Factory(dict)
    # Frames that are not valid JSON or not a valid trade of a known kind.
    parse_errors: int = 0
    # {"error": {...}, "id": N} replies to our control requests.
    error_replies: int = 0
    # Well-formed events of kinds this client does not consume (skipped).
    unknown_events: int = 0
    # Trades of symbols no longer subscribed (in flight while unsubscribing): dropped.
    ticks_ignored: int = 0
    connect_attempts: int = 0
    connect_failures: int = 0
    # Open connections lost without our asking (reset, close frame, stall, error).
    disconnects: int = 0
    # Connections replaced because they delivered nothing for stale_after_seconds.
    stale_connections: int = 0
    server_shutdowns: int = 0
    # Replacements opened before the old connection was closed (24 h cut, serverShutdown).
    connection_switches: int = 0
    rest_requests: int = 0
    # Symbols whose persisted last trade id was ahead of the exchange at start-up (logged at ERROR).
    resume_mismatches: int = 0
    rest_rate_limited: int = 0
    rest_errors: int = 0
    # Checks of the exchange's last trade ids (24hr ticker) after a connection came up or before an
    # unsubscription, and those that failed (logged at WARNING: missed trades may then go unnoticed
    # until the symbol's next live trade).
    last_id_checks: int = 0
    last_id_checks_failed: int = 0
    # Every symbol's unrepaired gaps as they are recorded (the /ws feed tells its subscribers).
    gap_notices: GapNotices = attrs.field(factory=GapNotices, eq=False, repr=False)

    def symbol(self, symbol: str) -> SymbolStatus:
        status = self.symbols.get(symbol)
        if status is None:
            status = self.symbols[symbol] = SymbolStatus(symbol, notices=self.gap_notices)
        return status

    def is_live(self, symbol: str) -> bool:
        """Whether the clock may close the symbol's candles: it has had a trade since the service started, is not
        backfilling, and some exchange connection is up (else trades may be in flight)."""
        symbol_status = self.symbols.get(symbol)
        if symbol_status is None or symbol_status.backfilling or symbol_status.last_tick_at is None:
            return False
        return any(connection.connected for connection in self.connections.values())

    def is_stopped(self, symbol: str) -> bool:
        """Whether the symbol stopped trading (BREAK, delisted) with all its trades in (not backfilling): its
        open candles may close by the clock whatever the connection, and no empty candles follow them."""
        symbol_status = self.symbols.get(symbol)
        return symbol_status is not None and symbol_status.stopped_trading and not symbol_status.backfilling

    @property
    def gaps_unrepaired(self) -> int:
        return sum(status.gaps_unrepaired for status in self.symbols.values())
