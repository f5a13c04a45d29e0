"""The plugin's markers, run in a user's project of their own (a pytest subprocess, the plugin found by its
entry point): the deadline that fails a hung test, a marker's options, and a misused marker."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

USER_TESTS = '''
import pytest
import trio


@pytest.mark.binance_simulator(timeout=0.5)
async def test_hangs(binance_simulator):
    await trio.sleep_forever()


@pytest.mark.binance_simulator(symbols=("SOLUSDT",))
@pytest.mark.marketdata_service(candle_intervals="1s")
async def test_options(binance_simulator, marketdata_service):
    assert binance_simulator.symbols == ("SOLUSDT",) and marketdata_service.symbols() == ("SOLUSDT",)
    assert [i.name for i in marketdata_service.settings.candle_intervals] == ["1s"]


@pytest.mark.binance_simulator("positional")
async def test_misused(binance_simulator):
    pass
'''


@pytest.mark.slow
def test_the_markers_in_a_users_project(tmp_path: Path) -> None:
    (tmp_path / "test_user.py").write_text(USER_TESTS)
    (tmp_path / "pytest.ini").write_text("[pytest]\ntrio_mode = true\n")
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rA"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    summary = result.stdout
    assert "PASSED test_user.py::test_options" in summary, summary
    assert "FAILED test_user.py::test_hangs" in summary and "TooSlowError" in summary, summary
    assert "test_user.py::test_misused" in summary and "keyword arguments only" in summary, summary
