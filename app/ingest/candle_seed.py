"""Seeds candles that began before the service saw their trades: Binance's kline plus the interval's first trade id.

The builder (``app.store.candles``) asks for a ``SeedRequest``; ``seed_candles`` answers each with a
``CandleSeed``: ``GET /api/v3/klines`` (weight 2) for the candle's values and trade count ``n``, and
``GET /api/v3/aggTrades?startTime=<open time>&limit=1`` (weight 4) for its first trade id ``f`` (intervals
longer than an hour first find their first hour with a trade: one more klines request). Trade ids are
consecutive per symbol, so the kline holds exactly trades ``f .. f+n-1`` and the builder adds the streamed trades
after them. Why this and not historicalTrades: docs/decisions/0005-candle-seeding.md.
"""

from __future__ import annotations

import logging

import trio

from app.convert import FrameError, candle_from_kline, quote_frame
from app.ingest.rest import BinanceRest, RestError
from app.ingest.status import IngestStatus
from app.intervals import Interval
from app.model import CandleSeed, SeedRequest

log = logging.getLogger(__name__)

KLINES_WEIGHT = 2
AGG_TRADES_WEIGHT = 4
HOUR_MS = 3_600_000
# Seeds fetched at once (the REST client paces them by the IP's request weight).
CONCURRENT_SEEDS = 4


async def fetch_seed(rest: BinanceRest, request: SeedRequest) -> CandleSeed:
    """The kline of ``request`` with its trade ids; a seed without kline (and the reason) when it cannot be had."""
    interval = Interval(request.interval)
    try:
        rows = await rest.get_json(
            "/api/v3/klines",
            {"symbol": request.symbol, "interval": request.interval, "startTime": str(request.open_time_ms),
             "limit": "1"},
            KLINES_WEIGHT,
        )
        if not (isinstance(rows, list) and rows and isinstance(rows[0], list) and rows[0][0] == request.open_time_ms):
            return _failed(request, f"klines returned no kline at the open time: {quote_frame(rows)}")
        first_trade_id = await _first_trade_id(rest, request, interval.close_time(request.open_time_ms))
        if first_trade_id is None:
            return _failed(request, "aggTrades found no trade in the interval")
        kline = candle_from_kline(request.symbol, request.interval, rows[0], first_trade_id)
    except (RestError, FrameError) as error:
        return _failed(request, str(error))
    return CandleSeed(request.symbol, request.interval, request.open_time_ms, kline)


async def _first_trade_id(rest: BinanceRest, request: SeedRequest, close_time_ms: int) -> int | None:
    """The first trade id at or after the open time: aggTrades answers at most an hour per window, so for a
    longer interval the first hour with a trade is found first (one request of up to 1000 hourly klines)."""
    start = request.open_time_ms
    if close_time_ms - start >= HOUR_MS:
        hours = await rest.get_json(
            "/api/v3/klines",
            {"symbol": request.symbol, "interval": "1h", "startTime": str(start), "endTime": str(close_time_ms),
             "limit": "1000"},
            KLINES_WEIGHT,
        )
        if not isinstance(hours, list):
            raise RestError(f"klines returned {quote_frame(hours)}, not a list")
        traded = next((row for row in hours if isinstance(row, list) and len(row) > 8 and row[8]), None)
        if traded is None or type(traded[0]) is not int:
            return None
        start = max(start, traded[0])
    rows = await rest.get_json(
        "/api/v3/aggTrades",
        {"symbol": request.symbol, "startTime": str(start), "endTime": str(min(start + HOUR_MS - 1, close_time_ms)),
         "limit": "1"},
        AGG_TRADES_WEIGHT,
    )
    if not isinstance(rows, list):
        raise RestError(f"aggTrades returned {quote_frame(rows)}, not a list")
    if not rows:
        return None
    first = rows[0].get("f") if isinstance(rows[0], dict) else None
    if type(first) is not int or first < 0:
        raise RestError(f"aggTrades returned a bad row: {quote_frame(rows[0])}")
    return first


def _failed(request: SeedRequest, reason: str) -> CandleSeed:
    log.warning("candle seed failed symbol=%s interval=%s open_time_ms=%d reason=%r", request.symbol,
                request.interval, request.open_time_ms, reason)
    return CandleSeed(request.symbol, request.interval, request.open_time_ms, None, reason)


async def seed_candles(
    requests: trio.MemoryReceiveChannel[SeedRequest],
    seeds: trio.MemorySendChannel[CandleSeed],
    rest_url: str,
    status: IngestStatus,
) -> None:
    """Answers every request with a seed, ``CONCURRENT_SEEDS`` at a time, with its own REST client (paced by the
    IP's used weight that Binance reports). Ends when ``requests`` ends; seeds still being fetched are then
    dropped (the aggregator that wanted them has stopped)."""
    limiter = trio.CapacityLimiter(CONCURRENT_SEEDS)
    rest = BinanceRest(rest_url, status)

    async def answer(request: SeedRequest) -> None:
        try:
            async with limiter:
                seed = await fetch_seed(rest, request)
            await seeds.send(seed)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the aggregator has stopped: nobody wants the seed any more

    try:
        async with seeds, requests, trio.open_nursery() as nursery:
            async for request in requests:
                nursery.start_soon(answer, request)
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await rest.aclose()
