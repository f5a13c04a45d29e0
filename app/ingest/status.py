"""What ingestion knows about its own health: read by /health, /api/symbols and /metrics.

Mutated only by the ingest tasks; plain counters (not Prometheus objects) so the hot path pays nothing;
the web layer turns them into metrics when scraped.
"""

from __future__ import annotations

import attrs

from app.model import Gap


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
    # Gaps that could not be repaired; never silently forgotten.
    unrepaired_gaps: list[Gap] = attrs.Factory(list)


@attrs.define
class ConnectionStatus:
    name: str
    url: str
    streams: int = 0
    connected: bool = False
    # trio.current_time() of the last frame received on this connection.
    last_frame_at: float | None = None
    reconnects: int = 0


@attrs.define
class IngestStatus:
    symbols: dict[str, SymbolStatus] = attrs.Factory(dict)
    connections: dict[str, ConnectionStatus] = attrs.Factory(dict)
    parse_errors: int = 0
    error_replies: int = 0

    def symbol(self, symbol: str) -> SymbolStatus:
        status = self.symbols.get(symbol)
        if status is None:
            status = self.symbols[symbol] = SymbolStatus(symbol)
        return status
