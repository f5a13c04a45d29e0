"""The processes the bench runs: the feeder, the simulator, the service and the baseline, on loopback.

Each is a child process with its stderr in a log file of the bench's temporary directory; the helpers
announce themselves with a JSON line on stdout. The service is ``python -m app serve`` configured by flags
and environment variables exactly as a user would run it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx
import orjson
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect

log = logging.getLogger("bench")

ROOT = Path(__file__).absolute().parent.parent
PYTHON = sys.executable


class Child:
    """A child process; JSON lines on its stdout are queued for ``next_message``."""

    def __init__(self, name: str, process: asyncio.subprocess.Process, log_path: Path) -> None:
        self.name = name
        self.process = process
        self.log_path = log_path
        self.messages: asyncio.Queue[dict[str, object]] = asyncio.Queue()
        self._reader = asyncio.create_task(self._read_stdout())

    @property
    def pid(self) -> int:
        return self.process.pid

    async def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        while line := await self.process.stdout.readline():
            with contextlib.suppress(ValueError):
                message = json.loads(line)
                if isinstance(message, dict):
                    self.messages.put_nowait(message)

    async def next_message(self, key: str, within: float) -> dict[str, object]:
        """The next stdout message holding ``key`` (earlier ones without it are dropped)."""
        deadline = time.monotonic() + within
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or (self.process.returncode is not None and self.messages.empty()):
                raise RuntimeError(f"{self.name} did not report {key!r}; see {self.log_path}:\n{self.tail()}")
            try:
                message = await asyncio.wait_for(self.messages.get(), min(remaining, 0.5))
            except TimeoutError:
                continue
            if key in message:
                return message

    async def send_line(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line.encode() + b"\n")
        await self.process.stdin.drain()

    def tail(self, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    async def stop(self) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), 15)
            except TimeoutError:
                log.warning("%s ignored SIGTERM for 15 s; killing it", self.name)
                self.process.kill()
                await self.process.wait()
        self._reader.cancel()


async def start_child(name: str, args: Sequence[str], workdir: Path, env: Mapping[str, str] | None = None) -> Child:
    log_path = workdir / f"{name}-{time.monotonic_ns()}.log"
    with log_path.open("wb") as stderr:
        process = await asyncio.create_subprocess_exec(
            *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=stderr, cwd=ROOT,
            env={**os.environ, **(env or {})},
        )
    return Child(name, process, log_path)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_delay_seconds(pid: int) -> float:
    """Time the threads of ``pid`` have spent runnable but waiting for a core, from /proc (schedstat)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            total += int((task / "schedstat").read_text().split()[1])
    return total / 1e9


# --- the feed sources ----------------------------------------------------------------------------------------


async def start_feeder(workdir: Path, source: str, frames: int, symbols: int) -> tuple[Child, dict[str, object]]:
    args = [PYTHON, "-m", "bench.feeder", "--source", source, "--frames", str(frames), "--symbols", str(symbols),
            "--hold"]
    child = await start_child("feeder", args, workdir)
    info = await child.next_message("ws_url", within=120)
    return child, info


async def start_simulator(workdir: Path, args: Sequence[str]) -> tuple[Child, dict[str, object]]:
    child = await start_child("simulator", [PYTHON, "-m", "bench.sim_process", *args], workdir)
    info = await child.next_message("ws_url", within=60)
    return child, info


# --- the systems under test ----------------------------------------------------------------------------------


class Service:
    """The project, run as ``python -m app serve``; ``feed_url`` is its ``/ws``."""

    def __init__(self, child: Child, http_url: str) -> None:
        self.child = child
        self.http_url = http_url
        self.feed_url = http_url.replace("http://", "ws://", 1) + "/ws"

    @property
    def pid(self) -> int:
        return self.child.pid

    async def ticks_ingested(self) -> int:
        """Ticks the service has put into its store (the fan-out's ``ticks_published``), via /health."""
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.get(f"{self.http_url}/health")
        body = response.json()
        count = find_counter(body)
        if count is None:
            raise RuntimeError(f"/health carries no tick counter: {response.text[:300]}")
        return count

    async def integrity(self) -> str:
        """What the service says it lost, repaired or dropped (from ``/metrics``), as a note: fast must not mean
        lossy."""
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.get(f"{self.http_url}/metrics")
        totals = dict.fromkeys(INTEGRITY_COUNTERS, 0.0)
        for family in text_string_to_metric_families(response.text):
            for sample in family.samples:
                name = sample.name.removeprefix("marketdata_").removesuffix("_total")
                if name in totals:
                    totals[name] += sample.value
        return ", ".join(f"{name} {value:,.0f}" for name, value in totals.items())

    async def backlog(self) -> str:
        """Where data waits at this moment (from ``/metrics``): the exchange sockets' read-ahead, and the depth of
        each internal channel, as a note (a backlog explains RSS that grows while the service is behind)."""
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.get(f"{self.http_url}/metrics")
        read_ahead = 0.0
        depths: list[str] = []
        for family in text_string_to_metric_families(response.text):
            for sample in family.samples:
                if sample.name == "marketdata_connection_read_ahead_bytes":
                    read_ahead += sample.value
                elif sample.name == "marketdata_channel_depth":
                    depths.append(f"{sample.labels['channel']} {sample.value:,.0f}")
        return f"read-ahead {read_ahead / 2**20:.1f} MB; channel depths {', '.join(depths)}"

    async def stop(self) -> None:
        await self.child.stop()
        warnings = service_warnings(self.child.log_path)
        if warnings:
            log.info("service log: %d warnings; first: %s", len(warnings), warnings[0][:240])


# Counters that must stay 0 on a clean feed (the feeder's and the simulator's trade ids are consecutive).
INTEGRITY_COUNTERS = ("gaps_found", "trades_lost", "parse_errors", "duplicate_ticks_dropped")


def service_warnings(log_path: Path) -> list[str]:
    """WARNING lines of a service log, less the ones every shutdown writes."""
    lines = log_path.read_text(errors="replace").splitlines()
    return [line for line in lines
            if " WARNING " in line and "received SIGTERM" not in line and "reason=cancelled" not in line]


def find_counter(body: object, names: Sequence[str] = ("ticks_published", "ticks_emitted")) -> int | None:
    """The first of ``names`` (``ticks_published`` by default) wherever /health puts it (top level or nested)."""
    if isinstance(body, dict):
        for key in names:
            value = body.get(key)
            if isinstance(value, int):
                return value
        for value in body.values():
            found = find_counter(value, names)
            if found is not None:
                return found
    return None


# The feeder serves no REST: a closed loopback port makes the service's REST calls fail at once.
NO_REST_URL = "http://127.0.0.1:9"


async def start_service(
    workdir: Path, ws_url: str, symbols: Sequence[str], env: Mapping[str, str] | None = None,
    rest_url: str = NO_REST_URL, database: str = "file", module: str = "app",
) -> Service:
    """The service on a free port; ``database`` "file" (SQLite in ``workdir``) or "memory"; ``module`` the one
    run with ``python -m`` (``app``, or a variant of it)."""
    port = free_port()
    path = ":memory:" if database == "memory" else workdir / f"service-{time.monotonic_ns()}.sqlite3"
    args = [PYTHON, "-m", module, "serve", "--ws-url", ws_url, "--rest-url", rest_url, "--host", "127.0.0.1",
            "--port", str(port), "--database-url", f"sqlite:///{path}", "--log-level", "WARNING"]
    environment = {"SYMBOLS": ",".join(symbols), **(env or {})}
    child = await start_child("service", args, workdir, environment)
    http_url = f"http://127.0.0.1:{port}"
    await wait_listening(child, http_url)
    return Service(child, http_url)


async def wait_listening(child: Child, http_url: str, within: float = 60) -> None:
    """Returns once ``child`` answers ``/health`` at ``http_url`` (whatever it says)."""
    deadline = time.monotonic() + within
    async with httpx.AsyncClient(timeout=2) as client:
        while True:
            try:
                await client.get(f"{http_url}/health")
                return
            except httpx.TransportError:
                if child.process.returncode is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{child.name} did not start; see {child.log_path}:\n{child.tail()}") from None
                await asyncio.sleep(0.05)


class Baseline:
    """The seed's design (``bench.baseline_seed``); ``feed_url`` is its WebSocket server."""

    def __init__(self, child: Child, feed_url: str) -> None:
        self.child = child
        self.feed_url = feed_url

    @property
    def pid(self) -> int:
        return self.child.pid

    async def ticks_ingested(self) -> int:
        async with connect(self.feed_url, ping_interval=None) as websocket:
            await websocket.send('{"op": "stats"}')
            reply = orjson.loads(await websocket.recv())
        return int(reply["ticks"])

    async def stop(self) -> None:
        await self.child.stop()


async def start_baseline(workdir: Path, ws_url: str, symbols: Sequence[str]) -> Baseline:
    args = [PYTHON, "-m", "bench.baseline_seed", "--url", ws_url, "--symbols", ",".join(symbols), "--port", "0"]
    child = await start_child("baseline", args, workdir)
    info = await child.next_message("ws_url", within=60)
    return Baseline(child, str(info["ws_url"]))
