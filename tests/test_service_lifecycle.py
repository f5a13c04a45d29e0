"""The supervisor as users run it: a subprocess that starts, serves, and stops on signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio
from process_output import read_rest, read_until

from app.settings import SETTINGS

# Nothing listens here: the service keeps reconnecting, which must not stop it from serving or stopping.
UNREACHABLE_EXCHANGE = "ws://127.0.0.1:9/ws"


def service_command(*flags: str) -> list[str]:
    return [sys.executable, "-m", "app", "serve", "--host", "127.0.0.1", "--port", "0",
            "--ws-url", UNREACHABLE_EXCHANGE, "--rest-url", "http://127.0.0.1:9", "--log-level", "INFO", *flags]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_service_serves_then_exits_0_on_signal(tmp_path: Path, signum: signal.Signals) -> None:
    database = tmp_path / "md.sqlite3"
    seen: list[str] = []
    with trio.fail_after(60):
        process = await trio.lowlevel.open_process(
            service_command("--database-url", f"sqlite:///{database}"),
            stderr=subprocess.PIPE, cwd=tmp_path, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert process.stderr is not None
        try:
            match = await read_until(process.stderr, r"serving urls=(\S+)", seen)
            async with httpx.AsyncClient(base_url=match.group(1)) as client:
                response = await client.get("/health")
            # Nothing listens at the exchange's address, so the service has never been connected.
            assert response.status_code == 503, response.text
            health = response.json()
            assert health["status"] == "unavailable"
            assert "disconnected" in [reason["code"] for reason in health["reasons"]]
            process.send_signal(signum)
            await read_rest(process.stderr, seen)
            exit_code = await process.wait()
        finally:
            process.kill()
    output = "".join(seen)
    assert exit_code == 0, output
    assert f"received {signum.name}" in output
    assert "stopped cleanly" in output
    assert database.exists()


def test_help_of_every_command_is_useful() -> None:
    for command in ([], ["serve"], ["simulate"], ["record"]):
        result = subprocess.run([sys.executable, "-m", "app", *command, "--help"], capture_output=True, text=True,
                                timeout=60, check=False)
        assert result.returncode == 0, result.stderr
        assert "usage: marketdata" in result.stdout
    serve_help = subprocess.run([sys.executable, "-m", "app", "serve", "--help"], capture_output=True, text=True,
                                timeout=60, check=True).stdout
    for variable in SETTINGS:
        assert variable in serve_help
