"""Settings: one frozen object, read from the environment (and ``.env``), overridable by CLI flags.

Every value is validated once, here; an invalid one raises ``SettingsError`` naming the variable and the value,
which the CLI prints as a single line before exiting.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.parse import urlsplit

import attrs
from dotenv import dotenv_values

from app.intervals import Interval, UnknownIntervalError, parse_intervals

_SYMBOL = re.compile(r"^[A-Z0-9]{2,20}$")
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class SettingsError(ValueError):
    def __init__(self, variable: str, value: str, problem: str) -> None:
        super().__init__(f"invalid {variable}={value!r}: {problem}")
        self.variable = variable
        self.value = value


@attrs.frozen(slots=True)
class Settings:
    symbols: tuple[str, ...] = ("BTCUSDT", "ETHUSDT")
    binance_ws_url: str = "wss://stream.testnet.binance.vision/ws"
    binance_rest_url: str = "https://testnet.binance.vision"
    candle_intervals: tuple[Interval, ...] = (Interval("1m"), Interval("5m"), Interval("1h"))
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    database_url: str = "sqlite:///./marketdata.sqlite3"
    log_level: str = "WARNING"
    # Streams per WebSocket connection; Binance allows 1024.
    max_streams_per_connection: int = 1024
    # A connection with subscribed symbols that delivers nothing for this long is replaced.
    stale_after_seconds: float = 30.0
    # The most trades fetched over REST to repair one gap; beyond it the gap is reported, not repaired.
    max_backfill_trades: int = 100_000
    # Raw ticks older than this are deleted from the database; candles are kept.
    tick_retention_days: float = 7.0
    # Buffer of the ingest -> store channel, in batches (one socket read each, at most ~450 trades); ingest
    # waits when it is full, it never drops.
    tick_buffer: int = 256

    @property
    def sqlite_path(self) -> str | None:
        """The SQLite file path (``":memory:"`` for none), or None for a non-SQLite URL."""
        if not self.database_url.startswith("sqlite:///"):
            return None
        return self.database_url.removeprefix("sqlite:///")


def _parse_symbols(text: str) -> tuple[str, ...]:
    symbols = tuple(dict.fromkeys(part.strip().upper() for part in text.split(",") if part.strip()))
    if not symbols:
        raise ValueError("no symbol given")
    for symbol in symbols:
        if not _SYMBOL.match(symbol):
            raise ValueError(f"{symbol!r} is not a symbol (2-20 letters or digits, e.g. BTCUSDT)")
    return symbols


def _parse_url(schemes: tuple[str, ...]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        parts = urlsplit(text.strip())
        if parts.scheme not in schemes or not parts.hostname:
            raise ValueError(f"expected a {' or '.join(schemes)} URL with a host")
        try:
            parts.port  # noqa: B018  (raises on a malformed port)
        except ValueError as error:
            raise ValueError(str(error)) from None
        return text.strip().rstrip("/") if parts.path in ("", "/") else text.strip()

    return parse


def _parse_intervals(text: str) -> tuple[Interval, ...]:
    try:
        return parse_intervals(text)
    except UnknownIntervalError as error:
        raise ValueError(str(error)) from None


def _parse_host(text: str) -> str:
    host = text.strip()
    if not host or any(char.isspace() for char in host):
        raise ValueError("expected a host name or IP address")
    return host


def _parse_port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise ValueError("expected an integer port") from None
    if not 0 <= port <= 65535:
        raise ValueError("port out of range 0-65535")
    return port


def _parse_database_url(text: str) -> str:
    url = text.strip()
    if not url.startswith("sqlite:///") or url == "sqlite:///":
        raise ValueError("expected sqlite:///PATH or sqlite:///:memory: (only SQLite is supported so far)")
    return url


def _parse_log_level(text: str) -> str:
    level = text.strip().upper()
    if level not in _LOG_LEVELS:
        raise ValueError(f"expected one of {', '.join(_LOG_LEVELS)}")
    return level


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError("must be a positive number")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError("must be a positive integer")
    return value


def _streams_per_connection(text: str) -> int:
    value = _positive_int(text)
    if value > 1024:
        raise ValueError("Binance allows at most 1024 streams per connection")
    return value


# variable name -> (Settings field, parser). Parsers raise ValueError naming the problem.
VARIABLES: dict[str, tuple[str, Callable[[str], object]]] = {
    "SYMBOLS": ("symbols", _parse_symbols),
    "BINANCE_WS_URL": ("binance_ws_url", _parse_url(("ws", "wss"))),
    "BINANCE_REST_URL": ("binance_rest_url", _parse_url(("http", "https"))),
    "CANDLE_INTERVALS": ("candle_intervals", _parse_intervals),
    "HTTP_HOST": ("http_host", _parse_host),
    "HTTP_PORT": ("http_port", _parse_port),
    "DATABASE_URL": ("database_url", _parse_database_url),
    "LOG_LEVEL": ("log_level", _parse_log_level),
    "MAX_STREAMS_PER_CONNECTION": ("max_streams_per_connection", _streams_per_connection),
    "STALE_AFTER_SECONDS": ("stale_after_seconds", _positive_float),
    "MAX_BACKFILL_TRADES": ("max_backfill_trades", _positive_int),
    "TICK_RETENTION_DAYS": ("tick_retention_days", _positive_float),
}


def load_settings(
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, str | None] | None = None,
    dotenv_path: str | Path | None = ".env",
) -> Settings:
    """Settings from ``.env`` < ``environ`` < ``overrides`` (CLI flags, keyed by variable name).

    Raises ``SettingsError`` for the first invalid value.
    """
    values: dict[str, str] = {}
    if dotenv_path is not None and Path(dotenv_path).is_file():
        values.update({key: value for key, value in dotenv_values(dotenv_path).items() if value is not None})
    values.update(os.environ if environ is None else environ)
    values.update({key: value for key, value in (overrides or {}).items() if value is not None})
    fields: dict[str, object] = {}
    for variable, (field, parse) in VARIABLES.items():
        if variable not in values:
            continue
        raw = values[variable]
        try:
            fields[field] = parse(raw)
        except ValueError as error:
            raise SettingsError(variable, raw, str(error)) from None
    return Settings(**fields)  # type: ignore[arg-type]


def configure_logging(level: str) -> None:
    """One line per event: time, level, logger, message with ``key=value`` context."""
    logging.basicConfig(
        level=getattr(logging, level),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        force=True,
    )
    # httpx logs every request at INFO: backfill would drown the service's own lines.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, getattr(logging, level)))
