"""The README's "Use from Python": its examples run as written, it names every public name, and the names
type-check under mypy --strict in a user's file."""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
import tomllib
from importlib.resources import files
from pathlib import Path

import pytest

import app

ROOT = Path(__file__).resolve().parent.parent
# Each example starts a simulator and the service: seconds, not minutes; a hang fails here.
EXAMPLE_TIMEOUT_SECONDS = 120


def section() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("\n## Use from Python\n")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", section(), flags=re.DOTALL)


def test_the_section_lists_exactly_the_public_names() -> None:
    listed = re.search(r"\*\*Public names\*\* \(`app.__all__`[^)]*\): (.*?)\. ", section(), flags=re.DOTALL)
    assert listed is not None, "the section lost its **Public names** list"
    assert sorted(re.findall(r"`(\w+)`", listed.group(1))) == sorted(app.__all__)


def test_every_public_name_imports() -> None:
    assert set(app._PUBLIC) == set(app.__all__)
    for name in app.__all__:
        assert getattr(app, name) is not None


def test_types_are_shipped_and_the_plugin_is_registered() -> None:
    assert files("app").joinpath("py.typed").is_file()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "py.typed" in project["tool"]["setuptools"]["package-data"]["app"]
    plugins = {entry.name: entry.value for entry in importlib.metadata.entry_points(group="pytest11")}
    assert plugins.get("marketdata") == "app.testing.plugin"


def run(*command: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=EXAMPLE_TIMEOUT_SECONDS,
                          env=None if env is None else {**os.environ, **env})


@pytest.mark.slow
@pytest.mark.parametrize("number", [0, 1])
def test_the_programs_run_as_written(number: int, tmp_path: Path) -> None:
    script = tmp_path / "example.py"
    script.write_text(python_blocks()[number])
    result = run(sys.executable, str(script), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "BTCUSDT" in result.stdout


@pytest.mark.slow
def test_the_plugin_example_passes_as_written_in_a_users_project(tmp_path: Path) -> None:
    [test] = [block for block in python_blocks() if block.startswith("async def test_")]
    (tmp_path / "test_user.py").write_text(test)
    (tmp_path / "pytest.ini").write_text("[pytest]\ntrio_mode = true\n")
    result = run(sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout


USER_FILE = '''
from decimal import Decimal

import trio

from app import (Candle, Client, Feed, MarketData, ServiceError, ServiceHealth, Settings, Subscription,
                 SubscriptionCutOff, Tick, open_feed, open_service)


async def strategy(md: MarketData, url: str) -> Decimal:
    tick: Tick | None = md.latest("BTCUSDT")
    candles: list[Candle] = await md.candles("BTCUSDT", "1m", limit=10)
    ticks: Subscription[Tick]
    async with md.subscribe(["BTCUSDT"]) as ticks:
        async for batch in ticks:
            total = sum((t.price * t.quantity for t in batch), Decimal(0))
            break
    async with Client(url) as client:
        health: ServiceHealth = await client.health()
        try:
            await client.tick("BTCUSDT")
        except ServiceError as error:
            code: str = error.code
    feed: Feed[Candle]
    async with open_feed(url, "candles", ["*"], "1m") as feed:
        async for updates in feed:
            first: Candle = updates[0]
    return total


async def main() -> None:
    async with open_service(Settings(symbols=("BTCUSDT",))) as md:
        try:
            await strategy(md, md.http_url)
        except SubscriptionCutOff as cut:
            reason: str = cut.reason

trio.run(main)
'''


def mypy_strict(path: Path) -> subprocess.CompletedProcess[str]:
    # The editable install is an import hook mypy cannot follow: point it at the package's source instead.
    return run(sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(ROOT / ".mypy_cache"), path.name,
               cwd=path.parent, env={"MYPYPATH": str(ROOT)})


@pytest.mark.slow
def test_a_users_file_is_mypy_strict_clean(tmp_path: Path) -> None:
    (tmp_path / "user.py").write_text(USER_FILE)
    result = mypy_strict(tmp_path / "user.py")
    assert result.returncode == 0, result.stdout + result.stderr
    # And it is checked against the real types: a wrong one is an error.
    (tmp_path / "wrong.py").write_text("from app import Tick\n\n\ndef f(tick: Tick) -> str:\n    return tick.price\n")
    wrong = mypy_strict(tmp_path / "wrong.py")
    assert wrong.returncode == 1 and 'Incompatible return value type (got "Decimal", expected "str")' in wrong.stdout
