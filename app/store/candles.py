"""Candles with Binance's kline semantics: a pure builder, and the task that feeds it from the tick channel."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import attrs
import trio

from app.intervals import Interval
from app.model import Candle, Tick

log = logging.getLogger(__name__)


def open_candle(tick: Tick, interval: Interval) -> Candle:
    open_time = interval.open_time(tick.trade_time_ms)
    taker_buy = not tick.is_buyer_maker
    quote = tick.price * tick.quantity
    return Candle(
        symbol=tick.symbol,
        interval=interval.name,
        open_time_ms=open_time,
        close_time_ms=interval.close_time(open_time),
        open=tick.price,
        high=tick.price,
        low=tick.price,
        close=tick.price,
        volume=tick.quantity,
        quote_volume=quote,
        trade_count=1,
        taker_buy_volume=tick.quantity if taker_buy else tick.quantity * 0,
        taker_buy_quote_volume=quote if taker_buy else quote * 0,
        first_trade_id=tick.trade_id,
        last_trade_id=tick.trade_id,
        closed=False,
    )


def add_trade(candle: Candle, tick: Tick) -> Candle:
    quote = tick.price * tick.quantity
    taker_buy = not tick.is_buyer_maker
    return attrs.evolve(
        candle,
        high=max(candle.high, tick.price),
        low=min(candle.low, tick.price),
        close=tick.price,
        volume=candle.volume + tick.quantity,
        quote_volume=candle.quote_volume + quote,
        trade_count=candle.trade_count + 1,
        taker_buy_volume=candle.taker_buy_volume + tick.quantity if taker_buy else candle.taker_buy_volume,
        taker_buy_quote_volume=(
            candle.taker_buy_quote_volume + quote if taker_buy else candle.taker_buy_quote_volume
        ),
        last_trade_id=tick.trade_id,
    )


class CandleBuilder:
    """Open candles per (symbol, interval); ``update`` returns the candles a tick closes."""

    def __init__(self, intervals: Sequence[Interval]) -> None:
        self.intervals = tuple(intervals)
        self._open: dict[tuple[str, str], Candle] = {}

    def update(self, tick: Tick) -> list[Candle]:
        closed: list[Candle] = []
        for interval in self.intervals:
            key = (tick.symbol, interval.name)
            candle = self._open.get(key)
            if candle is not None and tick.trade_time_ms > candle.close_time_ms:
                closed.append(attrs.evolve(candle, closed=True))
                candle = None
            self._open[key] = open_candle(tick, interval) if candle is None else add_trade(candle, tick)
        return closed

    def open_candle(self, symbol: str, interval: str) -> Candle | None:
        return self._open.get((symbol, interval))


async def aggregate(
    tick_batches: trio.MemoryReceiveChannel[Sequence[Tick]],
    closed_candles: trio.MemorySendChannel[Candle],
    builder: CandleBuilder,
) -> None:
    """Feed every tick to the builder; send each closed candle on. Closes ``closed_candles`` at the end."""
    async with tick_batches, closed_candles:
        async for batch in tick_batches:
            for tick in batch:
                for candle in builder.update(tick):
                    await closed_candles.send(candle)
