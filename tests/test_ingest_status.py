"""What ingest says about its symbols and connections (read by health, metrics and the aggregator)."""

from __future__ import annotations

from app.ingest.status import ConnectionStatus, IngestStatus


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
