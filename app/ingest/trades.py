"""``stream_trades``: the ingest task the supervisor starts, wiring the client, the sequencer and REST.

    connections (StreamClient shards) ──live ticks──▶ GapRepair.sequence_live ──Emitter──▶ ``ticks`` (downstream)
                                      REST backfill tasks ──pages──┘  (decisions: TradeSequencer, pure)

The output carries batches of ticks (about one socket read each) with, per symbol, every trade exactly once and
in trade-id order; it is closed when the task ends. Ingest waits when ``ticks`` is full; it never drops.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import trio

from app.ingest.binance_stream import StreamClient
from app.ingest.exchange_info import SymbolDirectory
from app.ingest.gap_repair import GapRepair
from app.ingest.rest import BinanceRest
from app.ingest.subscriptions import SubscriptionManager
from app.ingest.urls import trade_stream
from app.model import Tick
from app.settings import Settings

log = logging.getLogger(__name__)

# Socket reads parsed ahead of the sequencer (one batch each, from all connections together).
LIVE_BATCHES = 16


async def stream_trades(
    settings: Settings,
    subscriptions: SubscriptionManager,
    ticks: trio.MemorySendChannel[list[Tick]],
    resume_from: Mapping[str, int] | None = None,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Streams the subscribed symbols' trades into ``ticks`` until cancelled.

    ``resume_from`` maps symbols to the last trade id already stored: their trades from the next id on are
    backfilled (at most ``settings.max_backfill_trades``; beyond that a gap is reported).
    """
    status = subscriptions.status
    resume = dict(resume_from or {})
    rest = BinanceRest(settings.binance_rest_url, status)
    async with ticks:
        try:
            directory = SymbolDirectory(rest)
            live_send, live_receive = trio.open_memory_channel[list[Tick]](LIVE_BATCHES)
            async with trio.open_nursery() as nursery, live_send:
                gap_repair = GapRepair(status, rest, ticks, nursery, max_backfill_trades=settings.max_backfill_trades)
                nursery.start_soon(gap_repair.sequence_live, live_receive)
                symbols = subscriptions.symbols()
                for symbol in symbols:
                    gap_repair.track(symbol, resume.get(symbol))
                client = StreamClient(
                    settings.binance_ws_url,
                    status,
                    live_send,
                    max_streams_per_connection=settings.max_streams_per_connection,
                    stale_after_seconds=settings.stale_after_seconds,
                    on_connected=gap_repair.check_last_ids,
                )
                await nursery.start(client.run, [trade_stream(symbol) for symbol in symbols])
                subscriptions.attach(client, gap_repair, directory)
                log.info("ingest started symbols=%d resume=%d", len(symbols), len(resume))
                nursery.start_soon(subscriptions.watch_trading_status)
                task_status.started()
                try:
                    await trio.sleep_forever()
                finally:
                    subscriptions.detach()
        finally:
            with trio.CancelScope(shield=True):
                await rest.aclose()
