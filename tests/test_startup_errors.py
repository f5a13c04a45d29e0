"""Start-up problems a user fixes with a setting end in one line and exit code 2; a real crash keeps its traceback
and exit code 1. Every case runs the command as users do, in a subprocess."""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

UNREACHABLE_EXCHANGE = ("--ws-url", "ws://127.0.0.1:9/ws", "--rest-url", "http://127.0.0.1:9")


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


async def run_marketdata(tmp_path: Path, *arguments: str) -> tuple[int, str]:
    with trio.fail_after(60):
        result = await trio.run_process([sys.executable, "-m", "app", *arguments], capture_stdout=True,
                                        capture_stderr=True, check=False, cwd=tmp_path)
    return result.returncode, result.stderr.decode()


def assert_one_line(exit_code: int, output: str, *parts: str) -> None:
    assert exit_code == 2, output
    assert output.count("\n") == 1 and "Traceback" not in output, output
    for part in parts:
        assert part in output, output


async def test_serve_on_a_taken_port_says_which_address_and_how_to_change_it(tmp_path: Path, taken_port: int) -> None:
    exit_code, output = await run_marketdata(
        tmp_path, "serve", "--port", str(taken_port), "--database-url", "sqlite:///:memory:", *UNREACHABLE_EXCHANGE)
    assert_one_line(exit_code, output, f"marketdata: cannot listen on 127.0.0.1:{taken_port} for the HTTP API",
                    "already in use", "--port or HTTP_PORT")


async def test_demo_on_a_taken_port_says_which_address_and_how_to_change_it(tmp_path: Path, taken_port: int) -> None:
    exit_code, output = await run_marketdata(tmp_path, "demo", "--port", str(taken_port), "--speed", "100")
    assert_one_line(exit_code, output, f"marketdata demo: cannot listen on 127.0.0.1:{taken_port}", "--port")


@pytest.mark.parametrize(("flag", "server"), [("--port", "WebSocket"), ("--rest-port", "REST")])
async def test_simulate_on_a_taken_port_names_the_server_and_its_flag(
    tmp_path: Path, taken_port: int, flag: str, server: str
) -> None:
    exit_code, output = await run_marketdata(tmp_path, "simulate", "--synthetic", flag, str(taken_port))
    assert_one_line(exit_code, output, f"cannot listen on 127.0.0.1:{taken_port} for the simulator's {server}",
                    f"choose another port with {flag},")


async def test_an_unusable_sqlite_database_stops_start_up_with_one_line(tmp_path: Path) -> None:
    exit_code, output = await run_marketdata(
        tmp_path, "serve", "--port", "0", "--database-url", f"sqlite:///{tmp_path}/missing-dir/x.sqlite3",
        *UNREACHABLE_EXCHANGE)
    assert_one_line(exit_code, output, "marketdata: cannot use DATABASE_URL=", "unable to open database file")


# A task that fails after start-up: a bug, not a setting. It must be loud.
CRASHING_SERVICE = """
import sys
import app.service

async def broken_pruner(*args, **kwargs):
    raise RuntimeError("a task failed on purpose")

app.service.prune_ticks = broken_pruner
from app.cli import main
sys.exit(main(sys.argv[1:]))
"""


async def test_a_crash_of_a_task_after_start_up_logs_its_traceback_and_exits_1(tmp_path: Path) -> None:
    with trio.fail_after(60):
        result = await trio.run_process(
            [sys.executable, "-c", CRASHING_SERVICE, "serve", "--port", "0", "--database-url", "sqlite:///:memory:",
             *UNREACHABLE_EXCHANGE], capture_stderr=True, check=False, cwd=tmp_path)
    output = result.stderr.decode()
    assert result.returncode == 1, output
    assert "service crashed" in output and "Traceback" in output and "a task failed on purpose" in output


async def test_an_unreachable_postgresql_stops_start_up_with_one_line_without_the_password(tmp_path: Path) -> None:
    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    exit_code, output = await run_marketdata(
        tmp_path, "serve", "--port", "0", "--database-url", f"postgresql://postgres:s3cret@127.0.0.1:{port}/md",
        *UNREACHABLE_EXCHANGE)
    assert_one_line(exit_code, output, f"marketdata: cannot use DATABASE_URL=postgresql://postgres:***@127.0.0.1:{port}/md",
                    "cannot connect to PostgreSQL")
    assert "s3cret" not in output
