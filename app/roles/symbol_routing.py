"""Symbols added or removed at run time across processes (``POST``/``DELETE /api/symbols`` on an API replica).

    replica: SubscriptionManager ──router──▶ BusSymbolRouter ──request──▶ Redis ──▶ serve_symbol_requests
                                  ◀──────────── reply (the shard's leader) ◀──────  (every ingest process)

The processes of the shard the symbol hashes to (``app.roles.sharding``) apply the change to their own exchange
subscriptions, leader and standby alike (a standby stays warm); the leader answers, records it in the hash of
runtime-added symbols (which ingest processes subscribe at start) and announces it, so every replica serves the
same symbols (``follow_symbol_changes``). The leader's answer becomes the replica's HTTP answer, with the codes
the single process gives.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import trio

from app.bus.connection import BUS_UNAVAILABLE
from app.bus.keys import BusKeys
from app.bus.symbol_requests import (
    SymbolReply,
    SymbolRequest,
    announce,
    answer,
    ask,
    read_entries,
    read_requests,
    remember,
)
from app.ingest.subscriptions import (
    AlreadySubscribedError,
    ExchangeUnavailableError,
    NotSubscribedError,
    SubscriptionError,
    SubscriptionManager,
    UnknownSymbolError,
)
from app.roles.sharding import shard_of

log = logging.getLogger(__name__)

# How long a replica waits for the owning shard's leader (an add waits for the exchange's acknowledgement).
ANSWER_TIMEOUT_SECONDS = 10.0
BUS_RETRY_SECONDS = 0.5

_CODES: tuple[tuple[type[SubscriptionError], str], ...] = (
    (AlreadySubscribedError, "already_subscribed"),
    (NotSubscribedError, "not_subscribed"),
    (UnknownSymbolError, "unknown_symbol"),
    (ExchangeUnavailableError, "exchange_unavailable"),
)
REFUSED = "exchange_refused"


def reply_for(error: SubscriptionError) -> SymbolReply:
    code = next((code for kind, code in _CODES if isinstance(error, kind)), REFUSED)
    return SymbolReply(code, str(error))


def error_for(reply: SymbolReply, symbol: str) -> SubscriptionError:
    """The exception ``SubscriptionManager`` would have raised in the leader's place, with its message."""
    kind: type[SubscriptionError] = next((kind for kind, code in _CODES if code == reply.error), SubscriptionError)
    error = kind(symbol) if kind in (AlreadySubscribedError, NotSubscribedError, UnknownSymbolError) else kind("")
    error.args = (reply.message,)
    return error


class BusSymbolRouter:
    """A replica's ``SymbolRouter``: the request goes to the owning shard's leader, its answer comes back."""

    def __init__(self, redis: Any, keys: BusKeys, timeout_seconds: float = ANSWER_TIMEOUT_SECONDS) -> None:
        self._redis = redis
        self._keys = keys
        self._timeout = timeout_seconds

    async def add(self, symbol: str) -> None:
        await self._ask("add", symbol)

    async def remove(self, symbol: str) -> None:
        await self._ask("remove", symbol)

    async def _ask(self, op: str, symbol: str) -> None:
        try:
            reply = await ask(self._redis, self._keys, op, symbol, self._timeout)
        except BUS_UNAVAILABLE as error:
            raise ExchangeUnavailableError(f"the bus is unreachable: {error}") from None
        if reply is None:
            raise ExchangeUnavailableError(f"no ingest leader answered for {symbol} within {self._timeout:g} s (is "
                                           "the ingest of its shard running?)")
        if reply.error is not None:
            raise error_for(reply, symbol)


async def serve_symbol_requests(
    redis: Any,
    keys: BusKeys,
    shard_index: int,
    shard_count: int,
    subscriptions: SubscriptionManager,
    leading: Callable[[], bool],
    position: bytes,
) -> None:
    """Applies every request after ``position`` for a symbol this shard owns; while leading, answers it and
    records the change. Runs until cancelled; an unreachable bus is retried from the same position."""
    while True:
        try:
            position, requests = await read_requests(redis, keys, position, block_ms=1000)
            for request in requests:
                if shard_of(request.symbol, shard_count) == shard_index:
                    await _apply(redis, keys, subscriptions, request, leading)
        except BUS_UNAVAILABLE as error:
            log.warning("symbol requests not read: bus unreachable error=%s", error)
            await trio.sleep(BUS_RETRY_SECONDS)


async def _apply(redis: Any, keys: BusKeys, subscriptions: SubscriptionManager, request: SymbolRequest,
                 leading: Callable[[], bool]) -> None:
    reply = SymbolReply()
    try:
        if request.op == "add":
            await subscriptions.add(request.symbol)
        elif request.op == "remove":
            await subscriptions.remove(request.symbol)
        else:
            reply = SymbolReply(REFUSED, f"unknown symbol request {request.op!r}")
    except SubscriptionError as error:
        reply = reply_for(error)
    log.info("symbol request op=%s symbol=%s leading=%s error=%s", request.op, request.symbol, leading(),
             reply.error)
    if not leading():
        return  # the leader answers; a standby only keeps its own subscriptions alike
    try:
        if reply.error is None:
            await remember(redis, keys, request.symbol, added=request.op == "add")
            await announce(redis, keys, "added" if request.op == "add" else "removed", request.symbol)
        await answer(redis, keys, request, reply)
    except BUS_UNAVAILABLE as error:
        # The replica answers 503 when no answer comes; the live change stands (as in the single process).
        log.error("symbol request not answered op=%s symbol=%s error=%s", request.op, request.symbol, error)


async def follow_symbol_changes(redis: Any, keys: BusKeys, subscriptions: SubscriptionManager, position: bytes) -> None:
    """A replica serves what the leaders added and stops serving what they removed, whichever replica asked."""
    while True:
        try:
            position, changes = await read_entries(redis, keys.symbol_changes, position, block_ms=1000)
        except BUS_UNAVAILABLE as error:
            log.warning("symbol changes not read: bus unreachable error=%s", error)
            await trio.sleep(BUS_RETRY_SECONDS)
            continue
        for change in changes:
            if change["change"] == "added":
                subscriptions.track_external(change["symbol"])
            else:
                subscriptions.untrack_external(change["symbol"])
