"""The exchange connection: Binance's combined trade stream, parsed into ticks sent on a channel."""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence

import orjson
import trio
import trio_websocket

from app.convert import FrameError, quote_frame, trade_from_payload
from app.model import Tick

log = logging.getLogger(__name__)

BACKOFF_START_SECONDS = 0.5
BACKOFF_CAP_SECONDS = 30.0


def combined_stream_url(ws_url: str, symbols: Sequence[str]) -> str:
    """``wss://host/ws`` -> ``wss://host/stream?streams=btcusdt@trade/...`` (stream names are lower case)."""
    base = ws_url.rstrip("/")
    for suffix in ("/ws", "/stream"):
        base = base.removesuffix(suffix)
    streams = "/".join(f"{symbol.lower()}@trade" for symbol in symbols)
    return f"{base}/stream?streams={streams}"


async def stream_trades(
    ws_url: str,
    symbols: Sequence[str],
    ticks: trio.MemorySendChannel[Tick],
    stale_after_seconds: float,
) -> None:
    """Receive trades for ``symbols`` forever, reconnecting with jittered exponential backoff."""
    url = combined_stream_url(ws_url, symbols)
    backoff = BACKOFF_START_SECONDS
    async with ticks:
        while True:
            try:
                async with trio_websocket.open_websocket_url(url) as connection:
                    log.info("connected url=%s", url)
                    backoff = BACKOFF_START_SECONDS
                    await _receive_frames(connection, ticks, stale_after_seconds)
            except (OSError, trio_websocket.HandshakeError, trio_websocket.ConnectionClosed) as error:
                log.warning("disconnected url=%s error=%r", url, error)
            delay = random.uniform(0, backoff)
            backoff = min(backoff * 2, BACKOFF_CAP_SECONDS)
            await trio.sleep(delay)


async def _receive_frames(
    connection: trio_websocket.WebSocketConnection,
    ticks: trio.MemorySendChannel[Tick],
    stale_after_seconds: float,
) -> None:
    while True:
        with trio.move_on_after(stale_after_seconds) as watchdog:
            frame = await connection.get_message()
        if watchdog.cancelled_caught:
            log.warning("stale: no frame for %.1f s; reconnecting", stale_after_seconds)
            return
        try:
            message = orjson.loads(frame)
            tick = trade_from_payload(message["data"] if "data" in message else message)
        except (orjson.JSONDecodeError, FrameError, TypeError) as error:
            log.warning("unparsable frame error=%s frame=%s", error, quote_frame(frame))
            continue
        await ticks.send(tick)
