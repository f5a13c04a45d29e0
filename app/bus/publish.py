"""Fenced publishing: a leader's tick batch, its candle updates and its resume points, in one atomic step.

One server-side script checks that the shard's lease still holds this process's token, refuses trades at or
below a symbol's last published id (nothing is published twice), then appends the batch to the tick stream and
the candle updates to the candle stream (each entry numbered, so readers notice trimmed entries), and records
each symbol's last trade id, latest tick and the candles of each series a new leader continues. A leader that
was frozen past its lease and wakes up is refused before it writes anything (``Fenced``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from coredis.exceptions import ResponseError

from app.bus.keys import BusKeys
from app.convert import candles_to_bus, ticks_to_bus
from app.model import Candle, Tick

_PUBLISH = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return redis.error_reply('FENCED ' .. KEYS[1] .. ' is not held by this process')
end
local symbols = tonumber(ARGV[5])
local i = 6
for _ = 1, symbols do
  local last = redis.call('HGET', KEYS[4], ARGV[i])
  if last and tonumber(ARGV[i + 1]) <= tonumber(last) then
    return redis.error_reply('OVERLAP ' .. ARGV[i] .. ' trade ' .. ARGV[i + 1] .. ' <= last published ' .. last)
  end
  i = i + 4
end
local entry = false
if ARGV[3] ~= '' then
  local seq = redis.call('INCR', KEYS[7])
  entry = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 's', seq, 't', ARGV[3])
end
if ARGV[4] ~= '' then
  local seq = redis.call('INCR', KEYS[8])
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[2], '*', 's', seq, 'c', ARGV[4])
end
i = 6
for _ = 1, symbols do
  redis.call('HSET', KEYS[4], ARGV[i], ARGV[i + 2])
  redis.call('HSET', KEYS[5], ARGV[i], ARGV[i + 3])
  i = i + 4
end
-- A series' state only moves forward: a revision of an older candle never replaces a newer current one.
while i < #ARGV do
  local old = redis.call('HGET', KEYS[6], ARGV[i])
  local kept = old and cjson.decode(old)
  if not kept or tonumber(kept[#kept][3]) <= tonumber(ARGV[i + 1]) then
    redis.call('HSET', KEYS[6], ARGV[i], ARGV[i + 2])
  end
  i = i + 3
end
return entry
"""


class Fenced(Exception):
    """The shard's lease is not held by this process: it must stop publishing (another leader took over)."""


class Overlap(Exception):
    """A batch repeated trades already published: a bug in the caller's resume logic, never published."""


def series_field(symbol: str, interval: str) -> str:
    """A series' field in the candle state hash."""
    return f"{symbol}|{interval}"


def candle_field(candle: Candle) -> str:
    return series_field(candle.symbol, candle.interval)


class BusPublisher:
    def __init__(self, redis: Any, keys: BusKeys, lease_key: str, token: str, max_entries: int) -> None:
        self._redis = redis
        self._keys = keys
        self._lease_key = lease_key
        self._token = token
        self._max_entries = max_entries
        self._script = redis.register_script(_PUBLISH)

    async def publish(
        self, ticks: Sequence[Tick], candles: Sequence[Candle], states: Mapping[str, Sequence[Candle]] | None = None
    ) -> None:
        """Publishes ``ticks`` (in trade-id order per symbol) and ``candles`` (in the order they changed), and
        records ``states``: per series (``candle_field``) the candles a new leader continues, oldest first, the
        current one last (by default the newest candle of each series in ``candles``).

        Raises ``Fenced`` when this process no longer holds the lease, ``Overlap`` for a repeated trade, and
        ValueError for a batch out of id order; in every case nothing was written.
        """
        if not ticks and not candles:
            return
        per_symbol: dict[str, list[Tick]] = {}
        for tick in ticks:
            symbol_ticks = per_symbol.setdefault(tick.symbol, [])
            if symbol_ticks and tick.trade_id <= symbol_ticks[-1].trade_id:
                # Readers take a trade id at or below one they have seen for a repeat: it would be lost to them.
                raise ValueError(f"{tick.symbol} trade {tick.trade_id} after {symbol_ticks[-1].trade_id} in one batch")
            symbol_ticks.append(tick)
        args: list[str | bytes | int] = [
            self._token, self._max_entries, ticks_to_bus(ticks) if ticks else b"",
            candles_to_bus(candles) if candles else b"", len(per_symbol),
        ]
        for symbol, symbol_ticks in per_symbol.items():
            args += [symbol, symbol_ticks[0].trade_id, symbol_ticks[-1].trade_id, ticks_to_bus(symbol_ticks[-1:])]
        if states is None:
            newest: dict[str, Candle] = {}
            for candle in candles:
                current = newest.get(candle_field(candle))
                if current is None or candle.open_time_ms >= current.open_time_ms:
                    newest[candle_field(candle)] = candle
            states = {field: [candle] for field, candle in newest.items()}
        for field, series in states.items():
            if series:
                args += [field, series[-1].open_time_ms, candles_to_bus(series)]
        keys = self._keys
        try:
            await self._script(
                keys=[self._lease_key, keys.ticks, keys.candles, keys.last_trade_ids, keys.latest_ticks,
                      keys.candle_state, keys.sequence(keys.ticks), keys.sequence(keys.candles)],
                args=args,
            )
        except ResponseError as error:  # the script's error reply
            message = str(error)
            if "FENCED" in message:
                raise Fenced(message) from None
            if "OVERLAP" in message:
                raise Overlap(message) from None
            raise


async def last_trade_ids(redis: Any, keys: BusKeys) -> dict[str, int]:
    """The last published trade id per symbol: where a new leader resumes."""
    raw = await redis.hgetall(keys.last_trade_ids)
    return {_text(symbol): int(value) for symbol, value in raw.items()}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def decode_hash(raw: dict[Any, Any]) -> dict[str, bytes]:
    return {_text(key): value if isinstance(value, bytes) else str(value).encode() for key, value in raw.items()}

