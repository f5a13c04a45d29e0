"""Start-up problems a user fixes with a setting end in one line and exit code 2; a real crash keeps its traceback
and exit code 1. Every case runs the command as users do, in a subprocess."""

from __future__ import annotations

import socket
import sqlite3
import sys
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
import trio
from postgres_server import admin_connection, fresh_database

from app.model import Tick
from app.store.postgres import PostgresStorage
from app.store.sqlite import SQLiteStorage

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


# One stored trade: restore then reads its candles and replays its ticks.
STORED_TICK = Tick("BTCUSDT", Decimal("61829.76"), Decimal("0.0012"), 1_723_161_300_000, 1_723_161_300_001, 7, False)


async def test_a_sqlite_query_failing_during_restore_stops_start_up_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    storage = await SQLiteStorage.open(str(path))
    await storage.write_ticks([STORED_TICK])
    await storage.close()
    # A file that passes the start-up check (a sound file, the current schema version) whose candles table was
    # changed by hand: the first query of it fails, in the middle of the restore.
    with sqlite3.connect(path) as connection:
        connection.execute("ALTER TABLE candles DROP COLUMN complete")
    connection.close()
    exit_code, output = await run_marketdata(
        tmp_path, "serve", "--port", "0", "--database-url", f"sqlite:///{path}", *UNREACHABLE_EXCHANGE)
    assert_one_line(exit_code, output, f"marketdata: cannot restore from DATABASE_URL=sqlite:///{path}: ",
                    "SQLite query failed: no such column: complete")


@pytest.fixture
def reader_role() -> Iterator[str]:
    """A PostgreSQL role of its own, dropped afterwards (roles are the server's, not a database's)."""
    role = f"marketdata_reader_{uuid.uuid4().hex[:12]}"
    with admin_connection() as admin:
        admin.execute(f'CREATE ROLE "{role}" LOGIN')
    try:
        yield role
    finally:
        with admin_connection() as admin:
            admin.execute(f'DROP ROLE IF EXISTS "{role}"')


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        # The service's role may read the tables the connection needs, not the symbols added at run time: the
        # server refuses the restore's first query.
        ('GRANT USAGE, CREATE ON SCHEMA public TO "{role}"; GRANT SELECT ON schema_version, ticks, candles TO "{role}"',
         "permission denied for table added_symbols"),
        # A table changed by hand: the restore fails at its first candle query, after the symbols and trade ids.
        ('GRANT ALL ON SCHEMA public TO "{role}"; GRANT ALL ON ALL TABLES IN SCHEMA public TO "{role}"; '
         "ALTER TABLE candles DROP COLUMN complete", 'column "complete" does not exist'),
    ],
)
async def test_postgresql_refusing_a_query_during_restore_stops_start_up_with_one_line(
    tmp_path: Path, reader_role: str, change: str, problem: str
) -> None:
    with fresh_database() as url:
        storage = await PostgresStorage.open(url)
        await storage.write_ticks([STORED_TICK])
        await storage.close()
        with psycopg.connect(url, autocommit=True) as owner:
            for statement in change.format(role=reader_role).split(";"):
                owner.execute(statement)
        role_url = url.replace("postgresql://postgres@", f"postgresql://{reader_role}@")
        exit_code, output = await run_marketdata(
            tmp_path, "serve", "--port", "0", "--database-url", role_url, *UNREACHABLE_EXCHANGE)
    assert_one_line(exit_code, output, f"marketdata: cannot restore from DATABASE_URL={role_url}: ",
                    f"PostgreSQL query failed: {problem}")
