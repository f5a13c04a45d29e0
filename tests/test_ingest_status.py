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
