"""A consistent starting point for a reader: the tick stream's newest entry and the published state, read in one
atomic step, so following the stream from that entry misses nothing and what it repeats is recognisable."""

from __future__ import annotations

from typing import Any

import attrs

from app.bus.follow import StreamPosition
from app.bus.keys import BusKeys
from app.convert import candles_from_bus, ticks_from_bus
from app.model import Candle, Tick

_SNAPSHOT = """
return {
  redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1),
  redis.call('HGETALL', KEYS[2]),
  redis.call('HGETALL', KEYS[3]),
  redis.call('HGETALL', KEYS[4]),
}
"""


@attrs.frozen
class BusSnapshot:
    position: StreamPosition
    # Per symbol: the last trade id in the state below (stream entries after ``position`` may repeat some).
    last_trade_ids: dict[str, int]
    latest: dict[str, Tick]
    # The newest version of each series' current candle.
    candles: list[Candle]


def _pairs(flat: list[Any]) -> dict[str, bytes]:
    return {(key.decode() if isinstance(key, bytes) else key): value for key, value in zip(flat[::2], flat[1::2],
                                                                                          strict=True)}


async def take_snapshot(redis: Any, keys: BusKeys) -> BusSnapshot:
    script = redis.register_script(_SNAPSHOT)
    newest, last_ids, latest, candle_state = await script(
        keys=[keys.ticks, keys.last_trade_ids, keys.latest_ticks, keys.candle_state], args=[])
    position = StreamPosition()
    if newest:
        entry_id, fields = newest[0]
        position = StreamPosition(entry_id, int(_pairs(fields)["s"]))
    return BusSnapshot(
        position=position,
        last_trade_ids={symbol: int(value) for symbol, value in _pairs(last_ids).items()},
        latest={symbol: ticks_from_bus(value)[0] for symbol, value in _pairs(latest).items()},
        candles=[candle for value in _pairs(candle_state).values() for candle in candles_from_bus(value)],
    )
