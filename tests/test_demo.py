"""``marketdata demo`` as users run it: a subprocess that prints its URLs, serves candles, and stops on SIGTERM."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import trio
from process_output import read_until
from trio_websocket import open_websocket_url


async def test_demo_serves_a_candle_within_seconds_and_exits_0_on_sigterm(tmp_path: Path) -> None:
    seen: list[str] = []
    with trio.fail_after(60):
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "app", "demo", "--port", "0", "--speed", "5"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=tmp_path,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert process.stdout is not None
        try:
            await read_until(process.stdout, r"Stop with Ctrl-C", seen)
            api_match = re.search(r"API\s+(http://127\.0\.0\.1:\d+)", "".join(seen))
            assert api_match is not None, seen
            api_url = api_match.group(1)
            candles: list[dict[str, object]] = []
            async with httpx.AsyncClient(base_url=api_url) as client:
                with trio.fail_after(20):  # "within seconds"
                    while not candles:
                        response = await client.get("/api/candles/BTCUSDT", params={"interval": "1m"})
                        assert response.status_code == 200, response.text
                        candles = response.json()
                        if not candles:
                            await trio.sleep(0.2)
                symbols = (await client.get("/api/symbols")).json()["symbols"]
            # The WebSocket example printed works as shown.
            ws_line = next(line for line in seen if "python -m websockets" in line)
            ws_url = ws_line.split()[-1]
            async with open_websocket_url(ws_url, disconnect_timeout=5) as ws:
                await ws.send_message(json.dumps({"op": "subscribe", "channel": "ticks", "symbols": ["BTCUSDT"]}))
                assert json.loads(await ws.get_message())["op"] == "subscribed"
                data = json.loads(await ws.get_message())
            process.send_signal(signal.SIGTERM)
            with trio.fail_after(20):
                exit_code = await process.wait()
        finally:
            process.kill()
        assert process.stdout is not None
        async for chunk in process.stdout:
            seen.append(chunk.decode())
    output = "".join(seen)
    assert exit_code == 0, output
    assert candles[-1]["symbol"] == "BTCUSDT" and candles[-1]["interval"] == "1m"
    assert candles[-1]["closed"] is False
    assert {row["symbol"] for row in symbols} == {"BTCUSDT", "ETHUSDT"}
    assert data["channel"] == "ticks" and data["data"][0]["symbol"] == "BTCUSDT"
    # The dashboard's URL comes first.
    assert seen[0] == f"Dashboard: {api_url}/\n"
    for expected in ("curl ", "/api/candles/BTCUSDT", "/health", '"op": "subscribe"'):
        assert expected in output
    assert "Traceback" not in output
    # The temporary database is gone, nothing was written to the working directory.
    assert os.listdir(tmp_path) == []


def test_demo_refuses_bad_flags_with_a_clear_message() -> None:
    result = subprocess.run([sys.executable, "-m", "app", "demo", "--port", "99999"], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert "HTTP_PORT" in result.stderr and "Traceback" not in result.stderr
    result = subprocess.run([sys.executable, "-m", "app", "demo", "--speed", "0"], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 2 and "speed" in result.stderr
