"""The bench harness runs every row end to end with minuscule sizes (figures are not asserted, only present)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_bench_runs_every_row_end_to_end_with_tiny_sizes(tmp_path: Path) -> None:
    figures = tmp_path / "bench.json"
    completed = subprocess.run(
        [sys.executable, "-m", "bench", "--tiny", "--json", str(figures)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    results = json.loads(figures.read_text())["results"]
    assert sorted({result["row"] for result in results}) == ["1", "2", "3", "4", "5", "6"]
    for result in results:
        # Tiny windows on a busy machine may count nothing, so figures are only required to exist.
        assert result["project"], f"no project figure for {result['measure']}"
        assert all(math.isfinite(value) and value >= 0 for value in result["project"]), result
        if result["row"] in ("1", "2", "3"):
            assert result["baseline"], f"no baseline figure for {result['measure']}"
    assert "ingest capacity" in completed.stdout
    assert "proj/base" in completed.stdout


@pytest.mark.slow
def test_the_service_runs_with_websockets_parser_in_the_baseline_column(tmp_path: Path) -> None:
    # Decision 0001's comparison: the project with websockets' sans-I/O protocol in place of its frame parser.
    figures = tmp_path / "bench.json"
    completed = subprocess.run(
        [sys.executable, "-m", "bench", "--tiny", "--only", "1", "--baseline", "websockets-reader",
         "--json", str(figures)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    (result,) = json.loads(figures.read_text())["results"]
    assert result["project"] and result["baseline"], result
    # Both services report their integrity counters: the variant parsed every frame into trades.
    assert result["note"].count("parse_errors 0") == 2, result["note"]
    assert "baseline: bench.websockets_reader" in completed.stdout


@pytest.mark.slow
def test_both_frame_parsers_turn_the_same_reads_into_every_trade() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "bench.frame_parsers", "--frames", "3000", "--repeat", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )
    # The command asserts each parser yields all 3,000 trades; figures are not asserted.
    assert completed.returncode == 0, completed.stderr[-4000:]
    assert "websockets / hand-written" in completed.stdout


@pytest.mark.slow
def test_the_subscriber_row_checks_every_client_got_every_trade_and_the_soak_runs(tmp_path: Path) -> None:
    figures = tmp_path / "bench.json"
    completed = subprocess.run(
        [sys.executable, "-m", "bench", "--tiny", "--only", "6", "--json", str(figures)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    results = {result["measure"]: result for result in json.loads(figures.read_text())["results"]}
    missing = next(result for measure, result in results.items() if "trades not delivered" in measure)
    # Correctness, not speed: at 200 trades/s every subscriber gets every trade of its symbols.
    assert missing["project"] == [0], missing["note"]
    assert "0 cut off" in missing["note"]
    idle = next(result for measure, result in results.items() if "idle connections" in measure)
    assert "20 of 20 still open" in idle["note"]

    soaked = subprocess.run(
        [sys.executable, "-m", "bench", "--soak", "--soak-minutes", "0.2", "--json", str(figures)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )
    assert soaked.returncode == 0, soaked.stderr[-4000:]
    (result,) = json.loads(figures.read_text())["results"]
    assert result["row"] == "soak" and result["project"], result
    assert "0 cut off" in result["note"], result["note"]
