"""``python -m bench.bus``: ticks through the bus, against the single process, in the same run.

Two parts, each comparing ``marketdata serve`` (one process, SQLite) with the scale-out deployment on the local
Redis and PostgreSQL (a fresh key prefix and database): one ``marketdata ingest`` leader, two ``marketdata api``
replicas and one ``marketdata persist``.

1. Throughput: ``bench.feeder`` writes the shipped recording at socket speed (as in bench row 2). Counted over a
   window after a warm-up (from the first trade at the subscribers: the feeder serves no REST, and a new leader
   first retries the exchange's last trade ids for ~15 s): trades/s to one ``/ws`` subscriber of the single
   process; to one ``/ws`` subscriber of each replica; and into PostgreSQL (the persister's ``ticks_written``).
2. Latency: the simulator's synthetic market, paced (``--rates``); a tap on the simulator and a ``/ws`` subscriber
   (of the single process, then of a replica) in this process, as bench row 3: p50/p99 exchange -> subscriber.

Ratios within one run are what counts on a shared machine: the load average is printed with the table.
Needs Redis at 127.0.0.1:6379 and PostgreSQL at ``BENCH_POSTGRES_URL`` (default the local server).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path

import attrs
import coredis
import httpx
import psycopg

from app.ingest.urls import combined_stream_url, trade_stream
from bench.clients import FeedSubscribers, measure_latency, percentile
from bench.procs import (
    NO_REST_URL,
    PYTHON,
    Child,
    cpu_seconds,
    find_counter,
    free_port,
    run_delay_seconds,
    start_child,
    start_feeder,
    start_service,
    start_simulator,
    wait_listening,
)

log = logging.getLogger("bench")

REDIS_URL = "redis://127.0.0.1:6379/0"
ADMIN_URL = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
# The synthetic market's arrivals carry 1.43 trades on average (as in ``bench.__main__``).
FILLS_PER_ARRIVAL = sum(0.3**k for k in range(8))


@attrs.frozen
class Feed:
    ws_url: str
    rest_url: str
    symbols: tuple[str, ...]


@attrs.frozen
class Role:
    child: Child
    http_url: str

    @property
    def feed_url(self) -> str:
        return self.http_url.replace("http://", "ws://", 1) + "/ws"

    async def counter(self, name: str) -> int:
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.get(f"{self.http_url}/health")
        count = find_counter(response.json(), (name,))
        if count is None:
            raise RuntimeError(f"{self.child.name}: /health has no {name}: {response.text[:300]}")
        return count


@attrs.frozen
class Deployment:
    ingest: Role
    replicas: tuple[Role, ...]
    persister: Role


async def start_role(workdir: Path, name: str, args: Sequence[str], env: dict[str, str]) -> Role:
    port = free_port()
    child = await start_child(name, [PYTHON, "-m", "app", *args, "--host", "127.0.0.1", "--port", str(port),
                                     "--log-level", "WARNING"], workdir, env)
    role = Role(child, f"http://127.0.0.1:{port}")
    await wait_listening(child, role.http_url)
    return role


@contextlib.contextmanager
def fresh_database() -> Iterator[str]:
    name = f"bench_bus_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.asynccontextmanager
async def deployment(workdir: Path, feed: Feed) -> AsyncIterator[Deployment]:
    """Persister, two replicas, then the ingest leader (so the replicas follow the streams from their start)."""
    prefix = f"bench-bus-{uuid.uuid4().hex[:8]}"
    with fresh_database() as database_url:
        env = {"BUS_URL": REDIS_URL, "BUS_PREFIX": prefix, "DATABASE_URL": database_url,
               "SYMBOLS": ",".join(feed.symbols)}
        roles: list[Role] = []
        try:
            # One process migrates the fresh database before the others open it.
            roles.append(await start_role(workdir, "persist", ["persist"], env))
            roles.append(await start_role(workdir, "api-a", ["api"], env))
            roles.append(await start_role(workdir, "api-b", ["api"], env))
            roles.append(await start_role(workdir, "ingest", ["ingest", "--ws-url", feed.ws_url, "--rest-url",
                                                              feed.rest_url], env))
            yield Deployment(ingest=roles[3], replicas=(roles[1], roles[2]), persister=roles[0])
        finally:
            for role in reversed(roles):
                await role.child.stop()
            redis = coredis.Redis.from_url(REDIS_URL)
            async with redis:
                stale = [key async for key in redis.scan_iter(match=f"{prefix}:*")]
                if stale:
                    await redis.delete(stale)


# --- throughput ------------------------------------------------------------------------------------------------


async def redis_pid() -> int:
    redis = coredis.Redis.from_url(REDIS_URL)
    async with redis:
        info = await redis.info("server")
    return int(str(info["process_id"]))


@attrs.frozen
class Throughput:
    single: float
    replicas: tuple[float, ...]
    database: float
    cut_off: int
    # Per process: cores used in the window, and time spent waiting for a core (in cores).
    single_cores: dict[str, tuple[float, float]]
    bus_cores: dict[str, tuple[float, float]]


async def _window(warmup: float, window: float, feeds: Sequence[FeedSubscribers], persister: Role | None,
                  pids: Mapping[str, int]) -> tuple[list[float], float, dict[str, tuple[float, float]]]:
    """Trades/s of each feed's (one) subscriber, into the database, and for each of ``pids`` the cores it used and
    the cores' worth of time it waited for one (runnable), over the window after the warm-up (which starts once
    every subscriber has its first trade)."""
    deadline = time.monotonic() + 60
    while not all(feed.totals()[0] for feed in feeds):  # counted by the clients' tasks
        if time.monotonic() > deadline:
            raise RuntimeError("a subscriber got no trade within 60 s of the feed's start")
        await asyncio.sleep(0.05)
    await asyncio.sleep(warmup)
    before = [feed.totals()[0] for feed in feeds]
    written_before = await persister.counter("ticks_written") if persister else 0
    cpu_before = {name: (cpu_seconds(pid), run_delay_seconds(pid)) for name, pid in pids.items()}
    started = time.perf_counter()
    await asyncio.sleep(window)
    after = [feed.totals()[0] for feed in feeds]
    written_after = await persister.counter("ticks_written") if persister else 0
    elapsed = time.perf_counter() - started
    cores = {name: ((cpu_seconds(pid) - cpu_before[name][0]) / elapsed,
                    (run_delay_seconds(pid) - cpu_before[name][1]) / elapsed) for name, pid in pids.items()}
    rates = [(b - a) / elapsed for a, b in zip(before, after, strict=True)]
    return rates, (written_after - written_before) / elapsed, cores


async def throughput(workdir: Path, frames: int, warmup: float, window: float) -> Throughput:
    feeder, info = await start_feeder(workdir, "recording", frames, symbols=8)
    feed = Feed(str(info["ws_url"]), NO_REST_URL, tuple(str(s) for s in info["symbols"]))  # type: ignore[attr-defined]
    try:
        service = await start_service(workdir, feed.ws_url, feed.symbols)
        try:
            await feeder.next_message("connected", within=30)
            async with FeedSubscribers(service.feed_url, 1) as subscriber:
                await feeder.send_line("go")
                (single,), _, single_cores = await _window(warmup, window, [subscriber], None,
                                                           {"serve": service.pid, "feeder": feeder.pid})
        finally:
            await service.stop()
        log.info("throughput single process: %.0f trades/s", single)
        drain(feeder)  # the single process's "connected"
        async with deployment(workdir, feed) as bus:
            await feeder.next_message("connected", within=30)
            async with contextlib.AsyncExitStack() as stack:
                subscribers = [await stack.enter_async_context(FeedSubscribers(replica.feed_url, 1))
                               for replica in bus.replicas]
                await feeder.send_line("go")
                pids = {role.child.name: role.child.pid for role in (bus.ingest, *bus.replicas, bus.persister)}
                pids["redis-server"] = await redis_pid()
                pids["feeder"] = feeder.pid
                rates, database, bus_cores = await _window(warmup, window, subscribers, bus.persister, pids)
                cut_off = sum(len(feed.cut_off()) for feed in subscribers)
        log.info("throughput bus: replicas %s trades/s, database %.0f rows/s", [round(r) for r in rates], database)
        return Throughput(single, tuple(rates), database, cut_off, single_cores, bus_cores)
    finally:
        await feeder.stop()


# --- latency ---------------------------------------------------------------------------------------------------


@attrs.frozen
class Latency:
    rate: int
    sent: float
    single: tuple[float, float]
    bus: tuple[float, float]
    missing: int


async def _probe(tap_url: str, feed_url: str, warmup: float, window: float) -> tuple[tuple[float, float], int, float]:
    probe = await measure_latency(tap_url, feed_url, warmup, window)
    latencies = probe.latencies_ms()
    if not latencies:
        raise RuntimeError(f"no trade reached the subscriber of {feed_url} within 1 s")
    return (percentile(latencies, 0.5), percentile(latencies, 0.99)), probe.missing(), len(probe.tap) / window


async def latency(workdir: Path, rate: int, warmup: float, window: float) -> Latency:
    arrivals = rate / FILLS_PER_ARRIVAL
    simulator, info = await start_simulator(workdir, ["--synthetic", "--symbols", "8", "--rate", f"{arrivals:.3f}"])
    feed = Feed(str(info["ws_url"]), str(info["rest_url"]), tuple(str(s) for s in info["symbols"]))  # type: ignore[attr-defined]
    tap_url = combined_stream_url(str(info["ws_base_url"]), [trade_stream(symbol) for symbol in feed.symbols])
    try:
        service = await start_service(workdir, feed.ws_url, feed.symbols, rest_url=feed.rest_url)
        try:
            single, missing_single, sent = await _probe(tap_url, service.feed_url, warmup, window)
        finally:
            await service.stop()
        async with deployment(workdir, feed) as bus:
            through_bus, missing_bus, _ = await _probe(tap_url, bus.replicas[0].feed_url, warmup, window)
        log.info("latency rate=%d single p50=%.2f p99=%.2f bus p50=%.2f p99=%.2f", rate, *single, *through_bus)
        return Latency(rate, sent, single, through_bus, max(missing_single, missing_bus))
    finally:
        await simulator.stop()


# --- the table -------------------------------------------------------------------------------------------------


def render(result: Throughput, latencies: Sequence[Latency], load: str) -> str:
    def ratio(value: float) -> str:
        return f"{value / result.single:.2f}x" if result.single else "-"

    lines = [f"bus bench, load average at the start: {load}", "",
             "| measure | single process | through the bus | bus / single |", "|---|---|---|---|"]
    for name, rate in zip(("replica A", "replica B"), result.replicas, strict=True):
        lines.append(f"| trades/s to a /ws subscriber of {name} | {result.single:,.0f} | {rate:,.0f} | {ratio(rate)} |")
    lines.append(f"| ticks/s into PostgreSQL (1 persister) | - | {result.database:,.0f} | {ratio(result.database)} |")
    for measured in latencies:
        for index, quantile in enumerate(("p50", "p99")):
            single, bus = measured.single[index], measured.bus[index]
            lines.append(f"| latency {quantile} at {measured.rate:,}/s (sent {measured.sent:,.0f}/s), ms | "
                         f"{single:.2f} | {bus:.2f} | {bus / single:.2f}x |")
    def cores(used: Mapping[str, tuple[float, float]]) -> str:
        return ", ".join(f"{name} {ran:.2f}/{waited:.2f}" for name, (ran, waited) in used.items())

    notes = [f"cores used / cores' worth of waiting for a core, in the throughput window: single process: "
             f"{cores(result.single_cores)}; bus: {cores(result.bus_cores)} (PostgreSQL's processes not counted)"]
    if result.cut_off:
        notes.append(f"{result.cut_off} replica subscriber(s) cut off during the throughput window")
    missing = max((measured.missing for measured in latencies), default=0)
    if missing:
        notes.append(f"up to {missing} trades of a latency window did not reach the subscriber within 1 s after it")
    return "\n".join([*lines, *(f"\nnote: {note}" for note in notes)])


def drain(child: Child) -> None:
    while not child.messages.empty():
        child.messages.get_nowait()


def load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


async def run(args: argparse.Namespace) -> int:
    load = load_average()
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        if args.keep:
            workdir = Path(tempfile.mkdtemp(prefix="bench-bus-"))
            log.info("logs kept in %s", workdir)
        else:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-bus-")))
        result = await throughput(workdir, args.frames, args.warmup, args.window)
        latencies = [await latency(workdir, rate, args.latency_warmup, args.latency_window) for rate in args.rates]
    print(render(result, latencies, load))
    print(f"\n{time.monotonic() - started:.0f} s; load average at the end: {load_average()}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bus", description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=1_500_000, help="frames the feeder pre-renders")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--window", type=float, default=4.0, help="seconds of the throughput window")
    parser.add_argument("--latency-window", type=float, default=5.0)
    # Four processes that just started on a loaded machine take seconds to reach their pace.
    parser.add_argument("--latency-warmup", type=float, default=8.0)
    parser.add_argument("--rates", type=lambda text: [int(r) for r in text.split(",")], default=[1_000, 5_000],
                        help="trades/s of the latency part, comma-separated")
    parser.add_argument("--keep", action="store_true", help="keep the processes' logs")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
