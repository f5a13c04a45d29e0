"""Market events as the simulator publishes them: a stream name and the frame text, raw and combined.

Recorded frames are kept as the exact text that was received, so a replay reproduces them byte for byte;
trades the simulator generates (or shifts when looping) are rendered in Binance's ``@trade`` layout.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import attrs
import orjson

from app.convert import FrameError, trade_from_payload
from app.ingest.urls import trade_stream
from app.model import Tick


@attrs.frozen(slots=True)
class MarketEvent:
    """One frame for subscribers of ``stream``: ``raw`` for ``/ws`` clients, ``combined`` for ``/stream``."""

    stream: str
    raw: str
    combined: str
    # The trade it carries (it goes to the REST ledger), or None for other events (depth, klines, ...).
    tick: Tick | None = None


def wire_decimal(value: Decimal, *, exact: bool = False) -> str:
    """A trade's price or quantity as sent: Binance's 8 decimals, or with ``exact`` the digits it was published
    with (``"100.0"`` stays ``"100.0"``; see ``SimulatorConfig.exact_decimals``)."""
    return format(value, "f") if exact else f"{value:.8f}"


def trade_payload(tick: Tick, *, microseconds: bool = False, exact: bool = False) -> str:
    """Binance's ``@trade`` payload text, key order and decimal strings as Binance sends them."""
    scale = 1000 if microseconds else 1
    maker = "true" if tick.is_buyer_maker else "false"
    price, quantity = wire_decimal(tick.price, exact=exact), wire_decimal(tick.quantity, exact=exact)
    return (
        f'{{"e":"trade","E":{tick.event_time_ms * scale},"s":"{tick.symbol}","t":{tick.trade_id},'
        f'"p":"{price}","q":"{quantity}","T":{tick.trade_time_ms * scale},'
        f'"m":{maker},"M":true}}'
    )


def combine(stream: str, raw: str) -> str:
    return f'{{"stream":"{stream}","data":{raw}}}'


def trade_event(tick: Tick, *, exact: bool = False) -> MarketEvent:
    stream = trade_stream(tick.symbol)
    raw = trade_payload(tick, exact=exact)
    return MarketEvent(stream=stream, raw=raw, combined=combine(stream, raw), tick=tick)


def event_from_frame(text: str) -> MarketEvent | None:
    """The event a recorded frame carries, or None when its stream cannot be told (it is then skipped)."""
    try:
        message = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(message, dict):
        return None
    stream = message.get("stream")
    if isinstance(stream, str) and "data" in message:
        prefix = f'{{"stream":"{stream}","data":'
        # Binance's own layout: slice the payload out to keep its exact bytes; otherwise re-serialise.
        if text.startswith(prefix) and text.endswith("}"):
            raw = text[len(prefix) : -1]
        else:
            raw = orjson.dumps(message["data"]).decode()
        return MarketEvent(stream=stream, raw=raw, combined=text, tick=_tick_or_none(message["data"]))
    raw_stream = _stream_of_raw_event(message)
    if raw_stream is None:
        return None
    return MarketEvent(stream=raw_stream, raw=text, combined=combine(raw_stream, text), tick=_tick_or_none(message))


def _tick_or_none(payload: Any) -> Tick | None:
    if not isinstance(payload, Mapping) or payload.get("e") != "trade":
        return None
    try:
        return trade_from_payload(payload)
    except FrameError:
        return None


def _stream_of_raw_event(event: Mapping[str, Any]) -> str | None:
    symbol = event.get("s")
    if not isinstance(symbol, str):
        return None
    prefix = symbol.lower()
    kind = event.get("e")
    if kind == "trade":
        return f"{prefix}@trade"
    if kind == "aggTrade":
        return f"{prefix}@aggTrade"
    if kind == "kline" and isinstance(event.get("k"), Mapping):
        return f"{prefix}@kline_{event['k'].get('i')}"
    if kind == "24hrTicker":
        return f"{prefix}@ticker"
    if kind == "depthUpdate":
        return f"{prefix}@depth"
    if kind is None and {"u", "b", "a"} <= event.keys():
        return f"{prefix}@bookTicker"
    return None
