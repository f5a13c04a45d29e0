"""Settings: environment < flags, .env, and one clear line for every invalid value."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import attrs
import pytest

from app.intervals import Interval
from app.settings import SETTINGS, Settings, SettingsError, configuration_table, load_settings


def test_defaults_match_the_documented_ones() -> None:
    settings = load_settings(environ={}, dotenv_path=None)
    assert settings == Settings()
    assert settings.symbols == ("BTCUSDT", "ETHUSDT")
    assert settings.binance_ws_url == "wss://stream.testnet.binance.vision/ws"
    assert settings.binance_rest_url == "https://testnet.binance.vision"
    assert [interval.name for interval in settings.candle_intervals] == ["1m", "5m", "1h"]
    assert (settings.http_host, settings.http_port) == ("127.0.0.1", 8000)
    assert settings.sqlite_path == "./marketdata.sqlite3"


def test_environment_values_are_parsed_and_normalised() -> None:
    settings = load_settings(
        environ={
            "SYMBOLS": " solusdt, BTCUSDT ,solusdt",
            "CANDLE_INTERVALS": "1h,1s,1M,1w,3d",
            "HTTP_PORT": "0",
            "DATABASE_URL": "sqlite:///:memory:",
            "LOG_LEVEL": "debug",
            "BINANCE_WS_URL": "ws://127.0.0.1:9000/ws",
        },
        dotenv_path=None,
    )
    assert settings.symbols == ("SOLUSDT", "BTCUSDT")
    assert [interval.name for interval in settings.candle_intervals] == ["1s", "1h", "3d", "1w", "1M"]
    assert settings.http_port == 0
    assert settings.sqlite_path == ":memory:"
    assert settings.log_level == "DEBUG"


def test_flags_override_environment_which_overrides_dotenv(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text("SYMBOLS=ADAUSDT\nHTTP_PORT=9001\nLOG_LEVEL=ERROR\n")
    settings = load_settings(
        environ={"HTTP_PORT": "9002", "LOG_LEVEL": "INFO"},
        overrides={"LOG_LEVEL": "DEBUG", "SYMBOLS": None},
        dotenv_path=dotenv,
    )
    assert settings.symbols == ("ADAUSDT",)
    assert settings.http_port == 9002
    assert settings.log_level == "DEBUG"


@pytest.mark.parametrize(
    ("variable", "value", "problem"),
    [
        ("SYMBOLS", "BTC-USDT", "'BTC-USDT' is not a symbol"),
        ("SYMBOLS", " , ", "no symbol given"),
        ("CANDLE_INTERVALS", "1m,2m", "unknown kline interval '2m'"),
        ("CANDLE_INTERVALS", "", "no interval given"),
        ("BINANCE_WS_URL", "http://example.invalid/ws", "expected a ws or wss URL"),
        ("BINANCE_WS_URL", "wss://", "expected a ws or wss URL with a host"),
        ("BINANCE_WS_URL", "wss://host:99999/ws", "out of range"),
        ("BINANCE_REST_URL", "ftp://x", "expected a http or https URL"),
        ("HTTP_PORT", "65536", "port out of range 0-65535"),
        ("HTTP_PORT", "eighty", "expected an integer port"),
        ("HTTP_HOST", "", "expected a host name"),
        ("DATABASE_URL", "mysql://db/x", "expected sqlite:///PATH, sqlite:///:memory: or postgresql://"),
        ("DATABASE_URL", "postgresql://db", "or postgresql://USER@HOST:PORT/DATABASE"),  # no database name
        ("LOG_LEVEL", "LOUD", "expected one of DEBUG"),
        ("MAX_STREAMS_PER_CONNECTION", "2000", "at most 1024 streams"),
        ("STALE_AFTER_SECONDS", "-1", "must be a positive number"),
    ],
)
def test_invalid_value_names_variable_and_value(variable: str, value: str, problem: str) -> None:
    with pytest.raises(SettingsError) as raised:
        load_settings(environ={variable: value}, dotenv_path=None)
    message = str(raised.value)
    assert message.startswith(f"invalid {variable}={value!r}: ")
    assert problem in message


def test_cli_prints_one_line_and_exits_2_on_invalid_setting(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "app", "serve", "--port", "70000"],
        capture_output=True, text=True, cwd=tmp_path, timeout=60, check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["marketdata: invalid HTTP_PORT='70000': port out of range 0-65535"]


def test_a_postgresql_url_selects_postgresql() -> None:
    settings = load_settings(environ={"DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/md"}, dotenv_path=None)
    assert settings.database_url == "postgresql://postgres@127.0.0.1:5432/md" and settings.sqlite_path is None


def test_intervals_setting_holds_interval_objects() -> None:
    settings = load_settings(environ={"CANDLE_INTERVALS": "5m"}, dotenv_path=None)
    assert settings.candle_intervals == (Interval("5m"),)


def test_readme_configuration_table_is_the_declared_settings() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    start = readme.index("<!-- settings-table:")
    table = readme[readme.index("\n", start) + 1:readme.index("<!-- settings-table end -->")]
    assert table == configuration_table(), "README is stale: paste the output of `python -m app.settings`"


def test_settings_built_in_code_are_validated_and_normalised_like_the_environment() -> None:
    settings = Settings(symbols=("solusdt", "BTCUSDT", "solusdt"), candle_intervals="1h,1m")  # type: ignore[arg-type]
    assert settings.symbols == ("SOLUSDT", "BTCUSDT")
    assert settings.candle_intervals == (Interval("1m"), Interval("1h"))
    assert settings == load_settings(environ={"SYMBOLS": "SOLUSDT,BTCUSDT", "CANDLE_INTERVALS": "1m,1h"},
                                     dotenv_path=None)
    with pytest.raises(SettingsError, match=r"^invalid HTTP_PORT='70000': port out of range 0-65535$"):
        Settings(http_port=70000)
    with pytest.raises(SettingsError, match=r"^invalid SYMBOLS='BTC-USDT': "):
        attrs.evolve(Settings(), symbols=("BTC-USDT",))


def test_every_setting_has_one_flag_and_one_variable() -> None:
    flags = [spec.flag for spec in SETTINGS.values()]
    assert len(set(flags)) == len(flags) == len(attrs.fields(Settings))
    # A wide terminal, so argparse does not wrap "[env VARIABLE]" across lines.
    serve_help = subprocess.run([sys.executable, "-m", "app", "serve", "--help"], capture_output=True, text=True,
                                timeout=60, check=True, env={**os.environ, "COLUMNS": "500"}).stdout
    for spec in SETTINGS.values():
        assert spec.flag in serve_help and f"env {spec.variable}" in serve_help
