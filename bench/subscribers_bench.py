"""Row 6 (many live subscribers, many idle connections) and the soak (``--soak``): the service under many
connections and over time, run against the simulator with client processes of ``bench.subscriber_process``.

Live: ``clients`` subscribers of ``/ws`` split over ``processes`` client processes, each subscribed to 1-3
random symbols of ``symbols``, while the simulator makes ``rate`` trades/s. Every subscriber checks that it got
every trade of its symbols (consecutive ids, and up to the last id the exchange sent in the window); latency is
its arrival minus the arrival at an exchange tap in the same client process. Idle: ``idle`` connections that
subscribe to nothing, RSS of the service before and after, per connection.

Soak: one subscriber of every symbol, the simulator at ``rate`` over ``symbols`` for ``minutes``; RSS sampled,
growth measured after the warm-up.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
from array import array
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import httpx

from app.ingest.urls import combined_stream_url, trade_stream
from app.replay.sources import FILLS_PER_ARRIVAL
from bench.clients import FeedSubscribers, percentile
from bench.procs import (
    PYTHON,
    Child,
    Service,
    cpu_seconds,
    rss_bytes,
    service_warnings,
    start_child,
    start_service,
    start_simulator,
)
from bench.subscriber_process import raise_open_file_limit

log = logging.getLogger("bench")

MB = 2**20


@attrs.frozen
class SubscribersPlan:
    clients: int
    processes: int
    symbols: int
    rate: float
    warmup: float
    window: float
    idle: int

    @classmethod
    def full(cls) -> SubscribersPlan:
        return cls(clients=1_000, processes=4, symbols=50, rate=5_000.0, warmup=3.0, window=10.0, idle=10_000)

    @classmethod
    def quick(cls) -> SubscribersPlan:
        return cls(clients=200, processes=2, symbols=50, rate=2_000.0, warmup=1.5, window=3.0, idle=2_000)

    @classmethod
    def tiny(cls) -> SubscribersPlan:
        return cls(clients=6, processes=2, symbols=5, rate=200.0, warmup=0.5, window=0.5, idle=20)


@attrs.frozen
class LiveFigures:
    clients: int
    delivered_median_per_s: float
    delivered_min_per_s: float
    trades_missing: int
    clients_missing: int
    repeats: int
    cut_off: int
    p50_ms: float
    p99_ms: float
    p999_ms: float
    samples: int
    exchange_per_s: float
    cpu: float
    clients_cpu: float
    # The simulator's share: it sends every trade to the service and to each client process's tap.
    simulator_cpu: float
    rss_per_connection: float
    rss_before: int
    rss_after: int
    warnings: int


@attrs.frozen
class IdleFigures:
    connections: int
    still_open: int
    rss_per_connection: float
    rss_before: int
    rss_after: int


async def _start_clients(workdir: Path, mode: str, feed_url: str, count: int, processes: int,
                         symbols: Sequence[str] = (), tap_url: str = "") -> list[tuple[Child, Path]]:
    children: list[tuple[Child, Path]] = []
    share, extra = divmod(count, processes)
    for number in range(processes):
        latency_file = workdir / f"latency-{number}-{time.monotonic_ns()}.f64"
        args = [PYTHON, "-m", "bench.subscriber_process", mode, "--feed-url", feed_url,
                "--clients", str(share + (number < extra)), "--seed", str(number + 1),
                "--latency-file", str(latency_file)]
        if mode == "live":
            args += ["--tap-url", tap_url, "--symbols", ",".join(symbols)]
        children.append((await start_child(f"clients-{mode}-{number}", args, workdir), latency_file))
    # The processes connect at the same time, in groups; a loaded service takes minutes for 1,000 of them
    # (subscribed clients already receive trades while the rest are still connecting).
    for child, _ in children:
        connected = await child.next_message("connected", within=max(120.0, count / 4))
        if connected["connect_retries"]:
            log.warning("%s: %s handshakes retried, e.g. %s", child.name, connected["connect_retries"],
                        connected["first_retry"])
    return children


async def _stop_clients(children: Sequence[tuple[Child, Path]]) -> None:
    for child, _ in children:
        if child.process.stdin is not None and not child.process.stdin.is_closing():
            child.process.stdin.close()
    for child, _ in children:
        try:
            await asyncio.wait_for(child.process.wait(), 20)
        except TimeoutError:
            await child.stop()


async def _broadcast(children: Sequence[tuple[Child, Path]], line: str) -> None:
    for child, _ in children:
        await child.send_line(line)


def _client_limit(connections: int) -> dict[str, str]:
    # The service refuses WebSocket clients beyond MAX_WS_CLIENTS (1,000 by default); the row needs more.
    return {"MAX_WS_CLIENTS": str(max(1_000, connections + 100))}


async def live_subscribers(plan: SubscribersPlan, workdir: Path, database: str) -> LiveFigures:
    simulator, info = await start_simulator(workdir, ["--synthetic", "--symbols", str(plan.symbols), "--rate",
                                                      f"{plan.rate / FILLS_PER_ARRIVAL:.3f}"])
    symbols = list(info["symbols"])  # type: ignore[call-overload]
    tap_url = combined_stream_url(str(info["ws_base_url"]), [trade_stream(symbol) for symbol in symbols])
    try:
        service = await start_service(workdir, str(info["ws_url"]), symbols, _client_limit(plan.clients),
                                      rest_url=str(info["rest_url"]), database=database)
        try:
            await asyncio.sleep(plan.warmup)
            rss_before = rss_bytes(service.pid)
            children = await _start_clients(workdir, "live", service.feed_url, plan.clients, plan.processes,
                                            symbols, tap_url)
            try:
                await asyncio.sleep(plan.warmup)
                cpu_before, started = cpu_seconds(service.pid), time.perf_counter()
                clients_before = sum(cpu_seconds(child.pid) for child, _ in children)
                simulator_before = cpu_seconds(simulator.pid)
                await _broadcast(children, "start")
                await asyncio.sleep(plan.window)
                await _broadcast(children, "stop")
                elapsed = time.perf_counter() - started
                cpu = (cpu_seconds(service.pid) - cpu_before) / elapsed
                clients_cpu = (sum(cpu_seconds(child.pid) for child, _ in children) - clients_before) / elapsed
                simulator_cpu = (cpu_seconds(simulator.pid) - simulator_before) / elapsed
                rss_after = rss_bytes(service.pid)
                reports: list[dict[str, Any]] = [
                    (await child.next_message("report", within=60))["report"]  # type: ignore[misc]
                    for child, _ in children]
                latencies = array("d")
                for _, path in children:
                    latencies.frombytes(path.read_bytes())
            finally:
                await _stop_clients(children)
        finally:
            await service.stop()
        warnings = service_warnings(service.child.log_path)
    finally:
        await simulator.stop()
    for line in warnings[:3]:
        log.warning("subscribers: service said: %s", line[:300])
    delivered = [rate for report in reports for rate in report["delivered_per_s"]]
    missing = [count for report in reports for count in report["missing"]]
    closed = [reason for report in reports for reason in report["closed"]]
    if closed:
        log.warning("subscribers: %d cut off, e.g. %s", len(closed), closed[0])
    ordered = sorted(latencies)
    return LiveFigures(
        clients=len(delivered), delivered_median_per_s=statistics.median(delivered),
        delivered_min_per_s=min(delivered), trades_missing=sum(missing),
        clients_missing=sum(1 for count in missing if count), cut_off=len(closed),
        repeats=sum(int(report["repeats"]) for report in reports),
        p50_ms=percentile(ordered, 0.5), p99_ms=percentile(ordered, 0.99), p999_ms=percentile(ordered, 0.999),
        samples=len(ordered), exchange_per_s=plan.rate, cpu=cpu, clients_cpu=clients_cpu, simulator_cpu=simulator_cpu,
        rss_per_connection=(rss_after - rss_before) / max(1, plan.clients), rss_before=rss_before,
        rss_after=rss_after, warnings=len(warnings))


async def idle_connections(plan: SubscribersPlan, workdir: Path, database: str) -> IdleFigures:
    raise_open_file_limit(plan.idle + 256)  # the service, started from here, inherits it
    simulator, info = await start_simulator(workdir, ["--synthetic", "--symbols", "2", "--rate", "10"])
    try:
        service = await start_service(workdir, str(info["ws_url"]), list(info["symbols"]),  # type: ignore[call-overload]
                                      _client_limit(plan.idle), rest_url=str(info["rest_url"]), database=database)
        try:
            await asyncio.sleep(plan.warmup)
            rss_before = rss_bytes(service.pid)
            children = await _start_clients(workdir, "idle", service.feed_url, plan.idle, plan.processes)
            try:
                await asyncio.sleep(plan.warmup)
                rss_after = rss_bytes(service.pid)
                await _broadcast(children, "check")
                still_open = 0
                for child, _ in children:
                    still_open += int((await child.next_message("open", within=30))["open"])  # type: ignore[call-overload]
            finally:
                await _stop_clients(children)
        finally:
            await service.stop()
    finally:
        await simulator.stop()
    return IdleFigures(connections=plan.idle, still_open=still_open,
                       rss_per_connection=(rss_after - rss_before) / max(1, plan.idle), rss_before=rss_before,
                       rss_after=rss_after)


# --- the soak --------------------------------------------------------------------------------------------------


@attrs.frozen
class SoakFigures:
    minutes: float
    symbols: int
    rate: float
    delivered: int
    delivered_per_s: float
    cut_off: int
    warm_rss: int
    final_rss: int
    peak_rss: int
    growth_per_hour: float
    warmup_minutes: float
    integrity: str
    warnings: int

    @property
    def growth(self) -> int:
        return self.final_rss - self.warm_rss


async def soak(minutes: float, workdir: Path, database: str, symbols: int = 500, rate: float = 5_000.0,
               sample_every: float = 5.0) -> SoakFigures:
    """RSS of the service over ``minutes`` at ``rate`` trades/s over ``symbols``; progress on the log each
    minute. Growth is measured from the end of the warm-up (a fifth of the run, at most 10 minutes)."""
    warmup_s = min(600.0, minutes * 60 / 5)
    simulator, info = await start_simulator(workdir, ["--synthetic", "--symbols", str(symbols), "--rate",
                                                      f"{rate / FILLS_PER_ARRIVAL:.3f}"])
    samples: list[tuple[float, int, int]] = []  # (seconds, rss, delivered)
    try:
        service = await start_service(workdir, str(info["ws_url"]), list(info["symbols"]),  # type: ignore[call-overload]
                                      rest_url=str(info["rest_url"]), database=database)
        try:
            started = time.perf_counter()
            next_progress = 60.0
            async with FeedSubscribers(service.feed_url, 1) as feed:
                while (elapsed := time.perf_counter() - started) < minutes * 60 and not feed.cut_off():
                    samples.append((elapsed, rss_bytes(service.pid), feed.totals()[0]))
                    if elapsed >= next_progress:
                        log.info("soak %.0f/%.0f min: %s trades delivered, RSS %.1f MB", elapsed / 60, minutes,
                                 f"{samples[-1][2]:,}", samples[-1][1] / MB)
                        next_progress += 60.0
                    await asyncio.sleep(sample_every)
                samples.append((time.perf_counter() - started, rss_bytes(service.pid), feed.totals()[0]))
                cut_off = len(feed.cut_off())
            integrity = await _integrity(service)
        finally:
            await service.stop()
        warnings = service_warnings(service.child.log_path)
    finally:
        await simulator.stop()
    warm = next((sample for sample in samples if sample[0] >= warmup_s), samples[-1])
    end = samples[-1]
    hours = max(1e-9, (end[0] - warm[0]) / 3600)
    return SoakFigures(minutes=end[0] / 60, symbols=symbols, rate=rate, delivered=end[2],
                       delivered_per_s=end[2] / max(1e-9, end[0]), cut_off=cut_off, warm_rss=warm[1],
                       final_rss=end[1], peak_rss=max(sample[1] for sample in samples),
                       growth_per_hour=(end[1] - warm[1]) / hours, warmup_minutes=warm[0] / 60,
                       integrity=integrity, warnings=len(warnings))


async def _integrity(service: Service) -> str:
    try:
        return await service.integrity()
    except httpx.HTTPError as error:
        return f"unknown ({error!r})"
