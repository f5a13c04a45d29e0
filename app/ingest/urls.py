"""Binance stream names and the combined-stream URL derived from ``BINANCE_WS_URL``."""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import parse_qsl, urlsplit, urlunsplit


def trade_stream(symbol: str) -> str:
    """``BTCUSDT`` -> ``btcusdt@trade`` (Binance stream names are lower case)."""
    return f"{symbol.lower()}@trade"


def symbol_of_stream(stream: str) -> str:
    return stream.partition("@")[0].upper()


def combined_stream_url(ws_url: str, streams: Sequence[str]) -> str:
    """The combined endpoint with ``streams`` in the URL, from any of Binance's endpoint URLs.

    ``wss://host:9443``, ``wss://host/ws`` and ``wss://host/stream?streams=x`` all give
    ``wss://host/stream?streams=a/b``; other query parameters (``timeUnit=MICROSECOND``) are kept. Without
    streams the URL is ``wss://host/stream``, to which streams are added with SUBSCRIBE.
    """
    parts = urlsplit(ws_url)
    path = parts.path.rstrip("/")
    for suffix in ("/ws", "/stream"):
        if path.endswith(suffix):
            path = path[: -len(suffix)]
            break
    query = [f"{key}={value}" for key, value in parse_qsl(parts.query, keep_blank_values=True) if key != "streams"]
    if streams:
        # Binance expects the names verbatim ('@' and '/' unescaped).
        query.insert(0, "streams=" + "/".join(streams))
    return urlunsplit((parts.scheme, parts.netloc, f"{path}/stream", "&".join(query), ""))


def uses_microseconds(ws_url: str) -> bool:
    """True when the URL asks for ``timeUnit=MICROSECOND`` (trade and event times then come in µs)."""
    query = dict(parse_qsl(urlsplit(ws_url).query))
    return query.get("timeUnit", "").upper() == "MICROSECOND"
