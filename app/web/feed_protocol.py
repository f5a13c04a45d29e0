"""The ``/ws`` protocol without I/O: a client message becomes a ``Request`` or a precise ``ClientError``, and
``Subscriptions`` applies requests to what one client is subscribed to.

Protocol (JSON text frames)::

    → {"op": "subscribe", "channel": "ticks", "symbols": ["BTCUSDT"]}            ("*" or ["*"]: every symbol)
    → {"op": "subscribe", "channel": "candles", "symbols": ["BTCUSDT"], "interval": "1m"}
    → {"op": "unsubscribe", ...the same fields...}
    → {"op": "list"}                                                           (current subscriptions)
    → {"op": "ping"}
    ← {"op": "subscribed" | "unsubscribed", "channel": ..., "symbols": [...], ("interval": ...)}
    ← {"op": "subscriptions", "ticks": [...], "candles": {"1m": [...]}}
    ← {"op": "pong"}
    ← {"op": "error", "code": "...", "message": "..."}                 (the connection stays open)
    ← {"op": "gap", "symbol": ..., "first_trade_id": N, "last_trade_id": M, "reason": ..., "detected_at": ...}
                                                        (trades of a subscribed symbol lost for good)

An ``"id"`` in a client message is echoed in its reply.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any

import attrs
import orjson

from app.convert import quote_frame
from app.model import SYMBOL_PATTERN

# Request ids are echoed; longer ones are refused.
MAX_ID_LENGTH = 64
MAX_SYMBOLS_PER_MESSAGE = 1024
CHANNELS = ("ticks", "candles")
_FIELDS = frozenset({"op", "channel", "symbols", "interval", "id"})


class ClientError(Exception):
    """A client message that cannot be served: answered with ``{"op": "error", ...}``, the connection stays."""

    def __init__(self, code: str, message: str, request_id: object = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id

    def reply(self) -> dict[str, object]:
        return with_id({"op": "error", "code": self.code, "message": self.message}, self.request_id)


@attrs.frozen(slots=True)
class Request:
    # "subscribe", "unsubscribe", "list" or "ping".
    op: str
    # "ticks" or "candles"; None for list and ping.
    channel: str | None = None
    # None: "*" (every symbol).
    symbols: tuple[str, ...] | None = None
    interval: str | None = None
    request_id: object = None


def parse_request(message: str | bytes, intervals: Sequence[str], served: Callable[[], Collection[str]]) -> Request:
    """The request in a client message, or ``ClientError`` saying precisely what is wrong with it.

    ``intervals``: the configured candle intervals; ``served()``: the symbols a subscription may name (asked
    only when subscribing to symbols).
    """
    if isinstance(message, bytes):
        raise ClientError("invalid_message", "binary frames are not supported; send JSON text")
    try:
        document = orjson.loads(message)
    except orjson.JSONDecodeError as error:
        raise ClientError("invalid_json", f"not valid JSON: {error}") from None
    if not isinstance(document, dict):
        raise ClientError("invalid_message", "expected a JSON object with an \"op\"")
    request_id = document.get("id")
    if request_id is not None and not _valid_id(request_id):
        raise ClientError("invalid_message",
                          f"id must be an integer or a string of at most {MAX_ID_LENGTH} characters")
    op = document.get("op")
    if op in ("ping", "list"):
        return Request(op, request_id=request_id)
    try:
        return _parse_subscription(document, op, intervals, served, request_id)
    except ClientError as error:
        error.request_id = request_id
        raise


def _parse_subscription(
    document: dict[str, Any], op: object, intervals: Sequence[str], served: Callable[[], Collection[str]],
    request_id: object,
) -> Request:
    if op not in ("subscribe", "unsubscribe"):
        raise ClientError("unknown_op", f"unknown op {_shown(op)}; expected subscribe, unsubscribe, list or ping")
    channel = document.get("channel")
    if channel not in CHANNELS:
        raise ClientError("unknown_channel", f"unknown channel {_shown(channel)}; expected ticks or candles")
    interval = document.get("interval")
    if channel == "ticks":
        if interval is not None:
            raise ClientError("invalid_message", "interval applies to the candles channel only")
    elif interval not in intervals:
        raise ClientError("unknown_interval",
                          f"unknown interval {_shown(interval)}; configured: {', '.join(intervals)}")
    unknown = set(document) - _FIELDS
    if unknown:
        raise ClientError("invalid_message", f"unknown field(s): {_shown(', '.join(sorted(unknown)))}")
    symbols = _parse_symbols(document.get("symbols"), served if op == "subscribe" else None)
    return Request(op, channel, symbols, interval, request_id)


def _parse_symbols(value: object, served: Callable[[], Collection[str]] | None) -> tuple[str, ...] | None:
    if value == "*" or value == ["*"]:
        return None
    if not isinstance(value, list) or not value:
        raise ClientError("invalid_symbols", 'symbols must be a non-empty list of symbols, or "*"')
    if len(value) > MAX_SYMBOLS_PER_MESSAGE:
        raise ClientError("invalid_symbols", f"at most {MAX_SYMBOLS_PER_MESSAGE} symbols per message")
    symbols: list[str] = []
    for item in value:
        if not isinstance(item, str) or not SYMBOL_PATTERN.match(item.upper()):
            raise ClientError("invalid_symbols", f"{_shown(item)} is not a symbol (e.g. BTCUSDT)")
        symbols.append(item.upper())
    if served is not None:
        known = set(served())
        unknown = [symbol for symbol in dict.fromkeys(symbols) if symbol not in known]
        if unknown:
            raise ClientError("unknown_symbol",
                              f"not served: {', '.join(unknown)}; served: {', '.join(sorted(known))}")
    return tuple(dict.fromkeys(symbols))


@attrs.define
class Selection:
    """The symbols one channel (ticks, or the candles of one interval) is subscribed to: every symbol
    (``"*"``), a set, or none."""

    everything: bool = False
    symbols: set[str] = attrs.Factory(set)

    @property
    def empty(self) -> bool:
        return not self.everything and not self.symbols

    @property
    def size(self) -> int:
        """Subscriptions it counts for: one per symbol, one for ``"*"``."""
        return 1 if self.everything else len(self.symbols)

    def source_filter(self) -> frozenset[str] | None:
        return None if self.everything else frozenset(self.symbols)

    def wants(self, symbol: str) -> bool:
        return self.everything or symbol in self.symbols

    def listed(self) -> list[str]:
        return ["*"] if self.everything else sorted(self.symbols)


@attrs.frozen(slots=True)
class SourceChange:
    """A channel whose symbol set changed: the source subscription to create, change or end."""

    channel: str
    interval: str | None
    # None: every symbol; an empty set: no subscription any more.
    symbols: frozenset[str] | None


class Subscriptions:
    """What one client is subscribed to: ticks, and candles per interval; at most ``limit`` subscriptions
    (one per symbol and channel, ``"*"`` counting one)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.ticks = Selection()
        self.candles: dict[str, Selection] = {}

    @property
    def count(self) -> int:
        return self.ticks.size + sum(selection.size for selection in self.candles.values())

    def selection(self, channel: str, interval: str | None) -> Selection | None:
        return self.ticks if channel == "ticks" else self.candles.get(interval or "")

    def apply(self, request: Request) -> SourceChange | None:
        """Applies a subscribe or unsubscribe; returns the source change it needs (None: the symbol set
        stayed). Raises ``ClientError`` (and changes nothing) when the request cannot be honoured."""
        assert request.channel is not None
        before = self.selection(request.channel, request.interval) or Selection()
        after = attrs.evolve(before, symbols=set(before.symbols))
        if request.op == "subscribe":
            if request.symbols is None:
                after.everything = True
                after.symbols.clear()
            elif not after.everything:
                after.symbols.update(request.symbols)
            total = self.count - before.size + after.size
            if total > self.limit and after.size > before.size:
                raise ClientError("too_many_subscriptions",
                                  f"at most {self.limit} subscriptions per connection (one per symbol and channel, "
                                  f'"*" counts one); this request would make {total}', request.request_id)
        elif request.symbols is None:
            after = Selection()
        elif after.everything:
            raise ClientError("invalid_request",
                              'subscribed to "*": unsubscribe "*", then subscribe the symbols you want',
                              request.request_id)
        else:
            after.symbols.difference_update(request.symbols)
        if request.channel == "ticks":
            self.ticks = after
        elif after.empty:
            self.candles.pop(request.interval or "", None)
        else:
            self.candles[request.interval or ""] = after
        if after == before:
            return None
        symbols = frozenset[str]() if after.empty else after.source_filter()
        return SourceChange(request.channel, request.interval, symbols)

    def listing(self, request_id: object = None) -> dict[str, object]:
        """The reply to ``{"op": "list"}``."""
        return with_id({
            "op": "subscriptions",
            "ticks": self.ticks.listed(),
            "candles": {interval: selection.listed() for interval, selection in self.candles.items()},
        }, request_id)


def acknowledgement(request: Request) -> dict[str, object]:
    """The reply to a subscribe or unsubscribe that was applied."""
    reply: dict[str, object] = {
        "op": "subscribed" if request.op == "subscribe" else "unsubscribed",
        "channel": request.channel,
        "symbols": ["*"] if request.symbols is None else list(request.symbols),
    }
    if request.interval is not None:
        reply["interval"] = request.interval
    return with_id(reply, request.request_id)


def with_id(reply: dict[str, object], request_id: object) -> dict[str, object]:
    if request_id is not None:
        reply["id"] = request_id
    return reply


def _valid_id(value: object) -> bool:
    if isinstance(value, str):
        return len(value) <= MAX_ID_LENGTH
    return isinstance(value, int) and not isinstance(value, bool)


def _shown(value: object) -> str:
    """A client's value quoted in an error message, shortened."""
    return quote_frame(repr(value))
