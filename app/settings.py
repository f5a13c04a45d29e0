"""Settings: one frozen object, read from the environment (and ``.env``), overridable by CLI flags.

Each setting is declared once, as a field of ``Settings`` carrying its variable, flag, parser and help; the
variable table, the command-line flags, the demo's flags and the README's configuration table are derived from
those declarations. Every value is validated by its parser, whether it comes from the environment, a flag or
code (``Settings(symbols=("solusdt",))`` is normalised to ``("SOLUSDT",)``); an invalid one raises
``SettingsError`` naming the variable and the value, which the CLI prints as a single line before exiting.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs
from dotenv import dotenv_values

from app.intervals import Interval, UnknownIntervalError, parse_intervals
from app.model import SYMBOL_PATTERN

_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_SPEC = "marketdata.setting"
POSTGRES_SCHEMES = ("postgresql://", "postgres://")


class SettingsError(ValueError):
    def __init__(self, variable: str, value: str, problem: str) -> None:
        super().__init__(f"invalid {variable}={value!r}: {problem}")
        self.variable = variable
        self.value = value


@attrs.frozen(slots=True)
class SettingSpec:
    """How one setting is written outside the code: its variable, its flag, and how its text is read."""

    variable: str
    flag: str
    # Text -> value; raises ValueError naming the problem.
    parse: Callable[[str], Any]
    help: str
    # Value -> text as it would be written in the environment (the inverse of ``parse``).
    render: Callable[[Any], str]
    # Whether ``marketdata demo`` offers the flag too (the demo ignores the environment).
    in_demo: bool
    field: str = ""


def _joined(values: Any) -> str:
    return ",".join(getattr(value, "name", value) for value in values)


def _normalise(spec: SettingSpec, value: Any) -> Any:
    if value is None:  # an optional setting left unset
        return None
    text = value if isinstance(value, str) else spec.render(value)
    try:
        return spec.parse(text)
    except ValueError as error:
        raise SettingsError(spec.variable, text, str(error)) from None


def _setting(
    default: Any,
    variable: str,
    flag: str,
    parse: Callable[[str], Any],
    help: str,
    *,
    render: Callable[[Any], str] = str,
    in_demo: bool = False,
    secret: bool = False,
) -> Any:
    spec = SettingSpec(variable=variable, flag=flag, parse=parse, help=help, render=render, in_demo=in_demo)
    return attrs.field(default=default, metadata={_SPEC: spec}, converter=lambda value: _normalise(spec, value),
                       repr=not secret)


def _parse_symbols(text: str) -> tuple[str, ...]:
    symbols = tuple(dict.fromkeys(part.strip().upper() for part in text.split(",") if part.strip()))
    if not symbols:
        raise ValueError("no symbol given")
    for symbol in symbols:
        if not SYMBOL_PATTERN.match(symbol):
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
    if url.startswith(POSTGRES_SCHEMES) and urlsplit(url).path.strip("/"):
        return url
    if not url.startswith("sqlite:///") or url == "sqlite:///":
        raise ValueError("expected sqlite:///PATH, sqlite:///:memory: or postgresql://USER@HOST:PORT/DATABASE")
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


def _parse_prefix(text: str) -> str:
    prefix = text.strip()
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", prefix):
        raise ValueError("expected 1-64 letters, digits, '_', '.' or '-'")
    return prefix


def _parse_shard(text: str) -> str:
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if match is None:
        raise ValueError("expected K/N, e.g. 0/2")
    index, count = int(match[1]), int(match[2])
    if count < 1 or not 0 <= index < count:
        raise ValueError("expected 0 <= K < N")
    return f"{index}/{count}"


# RFC 6750's token characters (a bearer token travels in an Authorization header as it is).
_TOKEN = re.compile(r"^[A-Za-z0-9\-._~+/]+=*$")
MIN_ADMIN_TOKEN_LENGTH = 16


def _parse_admin_token(text: str) -> str:
    token = text.strip()
    if not _TOKEN.match(token):
        raise ValueError("expected letters, digits and - . _ ~ + / (e.g. from `openssl rand -hex 32`)")
    if len(token) < MIN_ADMIN_TOKEN_LENGTH:
        raise ValueError(f"too short to resist guessing: use at least {MIN_ADMIN_TOKEN_LENGTH} characters")
    return token


def _number(value: float) -> str:
    """``30.0`` as ``30``: how a person writes it in the environment."""
    return f"{value:g}"

def _intervals_text(intervals: tuple[Interval, ...]) -> str:
    return _joined(intervals)


@attrs.frozen(slots=True)
class Settings:
    symbols: tuple[str, ...] = _setting(
        ("BTCUSDT", "ETHUSDT"), "SYMBOLS", "--symbols", _parse_symbols,
        "symbols to ingest at start-up, comma-separated (more can be added live)", render=_joined)
    binance_ws_url: str = _setting(
        "wss://stream.testnet.binance.vision/ws", "BINANCE_WS_URL", "--ws-url", _parse_url(("ws", "wss")),
        "WebSocket base; mainnet `wss://stream.binance.com:9443/ws`; may carry `?timeUnit=MICROSECOND`")
    binance_rest_url: str = _setting(
        "https://testnet.binance.vision", "BINANCE_REST_URL", "--rest-url", _parse_url(("http", "https")),
        "REST base for backfill and `exchangeInfo`; mainnet `https://api.binance.com`")
    candle_intervals: tuple[Interval, ...] = _setting(
        (Interval("1m"), Interval("5m"), Interval("1h")), "CANDLE_INTERVALS", "--intervals", _parse_intervals,
        "candle intervals, any of `1s 1m 3m 5m 15m 30m 1h 2h 4h 6h 8h 12h 1d 3d 1w 1M`", render=_intervals_text,
        in_demo=True)
    http_host: str = _setting(
        "127.0.0.1", "HTTP_HOST", "--host", _parse_host, "address the HTTP API listens on", in_demo=True)
    http_port: int = _setting(
        8000, "HTTP_PORT", "--port", _parse_port, "port the HTTP API listens on (0: any free port)", in_demo=True)
    database_url: str = _setting(
        "sqlite:///./marketdata.sqlite3", "DATABASE_URL", "--database-url", _parse_database_url,
        "`sqlite:///PATH` (relative to the working directory), `sqlite:///:memory:` to keep nothing, or "
        "`postgresql://USER@HOST:PORT/DB`",
        in_demo=True)
    log_level: str = _setting(
        "WARNING", "LOG_LEVEL", "--log-level", _parse_log_level, "`DEBUG`, `INFO`, `WARNING`, `ERROR`",
        in_demo=True)
    max_streams_per_connection: int = _setting(
        1024, "MAX_STREAMS_PER_CONNECTION", "--max-streams-per-connection", _streams_per_connection,
        "streams per WebSocket connection (Binance's limit is 1024); more symbols open more connections")
    stale_after_seconds: float = _setting(
        30.0, "STALE_AFTER_SECONDS", "--stale-after", _positive_float,
        "a connection silent this long, with symbols subscribed, is replaced", render=_number)
    max_backfill_trades: int = _setting(
        100_000, "MAX_BACKFILL_TRADES", "--max-backfill-trades", _positive_int,
        "the most trades fetched over REST to repair one gap; beyond it the gap is reported")
    tick_retention_days: float = _setting(
        7.0, "TICK_RETENTION_DAYS", "--tick-retention-days", _positive_float,
        "raw ticks older than this are pruned; candles are kept", render=_number)
    admin_token: str | None = _setting(
        None, "ADMIN_TOKEN", "--admin-token", _parse_admin_token,
        "when set, `POST`/`DELETE /api/symbols` need `Authorization: Bearer <token>`; unset, they are open on "
        "loopback and refused beyond it (see [Security](#security)); prefer the variable to the flag, which `ps` "
        "shows", in_demo=True, secret=True)
    max_ws_clients: int = _setting(
        1000, "MAX_WS_CLIENTS", "--max-ws-clients", _positive_int,
        "`/ws` clients served at once; beyond it a client is refused with 503 before the upgrade")
    tick_buffer: int = _setting(
        256, "TICK_BUFFER", "--tick-buffer", _positive_int,
        "batches (one socket read each) waiting between ingest and the store; ingest waits when it is full, "
        "it never drops")
    storage_backlog_ticks: int = _setting(
        250_000, "STORAGE_BACKLOG_TICKS", "--storage-backlog-ticks", _positive_int,
        "ticks held in memory while database writes fail (about 420 bytes each); beyond them new ticks are still "
        "served but missing from the database, and counted")
    max_subscriptions_per_connection: int = _setting(
        1024, "MAX_SUBSCRIPTIONS_PER_CONNECTION", "--max-subscriptions-per-connection", _positive_int,
        'subscriptions one `/ws` connection may hold (one per symbol and channel, `"*"` counting one); beyond it '
        "a subscribe is refused")

    # The scale-out roles (``marketdata ingest|api|persist``): Redis Streams between processes.
    bus_url: str | None = _setting(
        None, "BUS_URL", "--bus-url", _parse_url(("redis", "rediss")),
        "`redis://HOST:PORT/DB` of the bus (Redis ≥ 7 or Valkey) for the scale-out roles; unset: one process")
    bus_prefix: str = _setting(
        "marketdata", "BUS_PREFIX", "--bus-prefix", _parse_prefix,
        "prefix of every key the service keeps in Redis (deployments can share a server)")
    bus_max_entries: int = _setting(
        100_000, "BUS_MAX_ENTRIES", "--bus-max-entries", _positive_int,
        "entries kept per bus stream (`MAXLEN ~`; one entry is one batch of ticks); a reader further behind "
        "gets an explicit gap")
    shard: str = _setting(
        "0/1", "SHARD", "--shard", _parse_shard,
        "`K/N`: this ingest process owns the symbols whose CRC-32 (of the upper-case symbol) mod N is K")
    lease_ttl_seconds: float = _setting(
        3.0, "LEASE_TTL_SECONDS", "--lease-ttl", _positive_float,
        "an ingest shard's leader lease; a standby takes over this long after the leader stops renewing",
        render=_number)

    @property
    def shard_index(self) -> int:
        return int(self.shard.split("/")[0])

    @property
    def shard_count(self) -> int:
        return int(self.shard.split("/")[1])

    @property
    def sqlite_path(self) -> str | None:
        """The SQLite file path (``":memory:"`` for none), or None for a non-SQLite URL."""
        if not self.database_url.startswith("sqlite:///"):
            return None
        return self.database_url.removeprefix("sqlite:///")


def _specs() -> Iterator[SettingSpec]:
    for field in attrs.fields(Settings):
        yield attrs.evolve(field.metadata[_SPEC], field=field.name)


# Every setting, by variable name, in declaration order.
SETTINGS: dict[str, SettingSpec] = {spec.variable: spec for spec in _specs()}


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
    fields = {spec.field: _normalise(spec, values[variable]) for variable, spec in SETTINGS.items()
              if variable in values}
    return Settings(**fields)


def add_settings_flags(
    parser: argparse.ArgumentParser, *, demo: bool = False, demo_defaults: Mapping[str, str] | None = None
) -> None:
    """One flag per setting (only the demo's when ``demo``, whose help shows defaults instead of variables, as
    the demo ignores the environment); each overrides its variable."""
    defaults = Settings()
    for spec in SETTINGS.values():
        if demo and not spec.in_demo:
            continue
        shown = (demo_defaults or {}).get(spec.variable) or default_text(defaults, spec)
        default = f"default {shown}" if demo else f"env {spec.variable}"
        parser.add_argument(spec.flag, dest=spec.variable, metavar=spec.variable,
                            help=f"{spec.help.replace('`', '')} [{default}]".replace("%", "%%"))


def flag_overrides(args: argparse.Namespace) -> dict[str, str | None]:
    """The flags given on the command line, keyed by variable, for ``load_settings(overrides=...)``."""
    return {variable: getattr(args, variable, None) for variable in SETTINGS}


def default_text(settings: Settings, spec: SettingSpec) -> str:
    value = getattr(settings, spec.field)
    return "(unset)" if value is None else spec.render(value)


def configuration_table() -> str:
    """The README's configuration table, derived from the declarations (a test keeps the README equal)."""
    defaults = Settings()
    rows = ["| variable | flag | default | meaning |", "|---|---|---|---|"]
    rows += [f"| `{spec.variable}` | `{spec.flag}` | `{default_text(defaults, spec)}` | {spec.help} |"
             for spec in SETTINGS.values()]
    return "\n".join(rows) + "\n"


def configure_logging(level: str) -> None:
    """One line per event: time, level, logger, message with ``key=value`` context."""
    logging.basicConfig(
        level=getattr(logging, level),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        force=True,
    )
    # httpx logs every request at INFO: backfill would drown the service's own lines.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, getattr(logging, level)))


if __name__ == "__main__":
    sys.stdout.write(configuration_table())  # ``python -m app.settings`` prints the README table
