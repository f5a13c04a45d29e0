"""Symbol changes asked for at run time, routed to the ingest shard that owns the symbol.

An API replica cannot subscribe a symbol itself (it has no exchange connection): it appends the request to a
stream and waits on a reply list of its own (``BLPOP``). Every ingest process reads the stream; the processes
of the shard the symbol hashes to apply it (the standby too, to stay warm), and the leader answers, records the
change in the hash of runtime-added symbols (which ingest processes subscribe at start) and announces it on the
changes stream, which every replica follows to serve the same symbols.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import attrs
import orjson
from coredis import PureToken

from app.bus.follow import START
from app.bus.keys import BusKeys

# Requests kept in the stream (``MAXLEN ~``): only readers that are running read them.
REQUESTS_KEPT = 1_000
# How long an unread reply is kept (the replica stopped waiting).
REPLY_TTL_SECONDS = 60


@attrs.frozen(slots=True)
class SymbolRequest:
    # "add" or "remove".
    op: str
    symbol: str
    request_id: str


@attrs.frozen(slots=True)
class SymbolReply:
    """The leader's answer: ``error`` None when done, else a code (``already_subscribed``, ``not_subscribed``,
    ``unknown_symbol``, ``exchange_unavailable``, ``exchange_refused``) and why."""

    error: str | None = None
    message: str = ""


async def ask(redis: Any, keys: BusKeys, op: str, symbol: str, timeout_seconds: float) -> SymbolReply | None:
    """Appends a request and waits for its answer; None when no leader answered in time."""
    request_id = secrets.token_hex(8)
    await redis.xadd(keys.symbol_requests, {"op": op, "symbol": symbol, "id": request_id},
                     trim_strategy=PureToken.MAXLEN, threshold=REQUESTS_KEPT,
                     trim_operator=PureToken.APPROXIMATELY)
    reply_key = keys.symbol_reply(request_id)
    answered = await redis.blpop([reply_key], timeout=timeout_seconds)
    if answered is None:
        return None
    document = orjson.loads(answered[1])
    return SymbolReply(document.get("error"), document.get("message", ""))


async def answer(redis: Any, keys: BusKeys, request: SymbolRequest, reply: SymbolReply) -> None:
    reply_key = keys.symbol_reply(request.request_id)
    await redis.rpush(reply_key, [orjson.dumps(attrs.asdict(reply))])
    await redis.expire(reply_key, REPLY_TTL_SECONDS)


async def stream_end(redis: Any, stream: str) -> bytes:
    """The newest entry's id: a reader that reads the state after this and follows from it misses nothing."""
    newest = await redis.xrevrange(stream, count=1)
    return bytes(newest[0].identifier) if newest else START


async def read_entries(redis: Any, stream: str, position: bytes, block_ms: int) -> tuple[bytes, list[dict[str, str]]]:
    """The entries after ``position`` (waiting up to ``block_ms`` for one) as text fields, and the new position."""
    reply = await redis.xread({stream: position}, count=100, block=block_ms)
    entries: list[dict[str, str]] = []
    for entry in (reply or {}).get(stream.encode(), ()):
        entries.append({key.decode(): value.decode() for key, value in entry.field_values.items()})
        position = bytes(entry.identifier)
    return position, entries


async def read_requests(redis: Any, keys: BusKeys, position: bytes, block_ms: int) -> tuple[bytes, list[SymbolRequest]]:
    """The requests after ``position`` (waiting up to ``block_ms`` for one), and the new position."""
    position, entries = await read_entries(redis, keys.symbol_requests, position, block_ms)
    return position, [SymbolRequest(entry["op"], entry["symbol"], entry["id"]) for entry in entries]


async def announce(redis: Any, keys: BusKeys, change: str, symbol: str) -> None:
    """Tells every replica that ``symbol`` was ``added`` or ``removed``."""
    await redis.xadd(keys.symbol_changes, {"change": change, "symbol": symbol}, trim_strategy=PureToken.MAXLEN,
                     threshold=REQUESTS_KEPT, trim_operator=PureToken.APPROXIMATELY)


async def added_symbols(redis: Any, keys: BusKeys) -> list[str]:
    """The symbols added at run time (and not removed since), oldest first."""
    raw = await redis.hgetall(keys.added_symbols)
    by_time = sorted((int(added_at), symbol.decode()) for symbol, added_at in raw.items())
    return [symbol for _, symbol in by_time]


async def remember(redis: Any, keys: BusKeys, symbol: str, *, added: bool) -> None:
    if added:
        await redis.hset(keys.added_symbols, {symbol: int(time.time() * 1000)})
    else:
        await redis.hdel(keys.added_symbols, [symbol])
