"""``python -m bench``: throughput, latency and memory of the service against the seed's design.

Rows (medians over ``--repeat`` runs; progress on stderr, the table on stdout):

1. ingest capacity: trades/s from the feed socket into the store with no subscriber, read from each system's
   own counter (the project's ``ticks_published`` from ``/health``; the baseline's ``stats`` reply);
2. end to end: trades/s delivered to 1 and to 100 subscribers of ``/ws`` (per subscriber, median of them);
3. latency: p50/p99/p99.9 in ms from the simulator to the subscriber at 1,000, 5,000 and 10,000 trades/s (a tap
   on the simulator and both systems' subscribers in this process; the ratio column compares them);
4. scale: 1,500 symbols over 2 exchange connections, 1 million trades, resident memory sampled from /proc;
5. candles: the aggregator's trades/s with 6 intervals (pure, in-process), SQLite and PostgreSQL persistence
   rows/s, the memory of a tick held for a failing database, the start-up check of an SQLite file, and the
   memory a closed candle costs in the ring (tracemalloc; packed records against ``Candle`` objects);
6. subscribers: 1,000 ``/ws`` clients (4 processes) on 1-3 of 50 symbols at 5,000 trades/s: every trade delivered,
   latency, CPU, RSS per connection; and 10,000 idle connections (``bench.subscribers_bench``).

``--soak`` runs only the soak instead: 5,000 trades/s over 500 symbols for ``--soak-minutes`` (60), RSS growth.

Rows 1-2 are fed by ``bench.feeder`` (the simulator's market pre-rendered and written at socket speed),
because the simulator generates trades live and tops out below the service's capacity; rows 3-4 run the
simulator itself (``bench.sim_process``), paced, with its synthetic market. Everything binds 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import attrs
import httpx

from app.ingest.urls import combined_stream_url, trade_stream
from app.model import Tick
from app.replay.sources import FILLS_PER_ARRIVAL
from bench import candles_bench, storage_bench, subscribers_bench
from bench.clients import FeedSubscribers, measure_latency, percentile
from bench.feeder import DEMO_RECORDING
from bench.procs import (
    NO_REST_URL,
    Baseline,
    Child,
    Service,
    cpu_seconds,
    rss_bytes,
    service_warnings,
    start_baseline,
    start_feeder,
    start_service,
    start_simulator,
)

log = logging.getLogger("bench")

SYSTEMS = ("project", "baseline")
ROWS = {"1": "ingest", "2": "e2e", "3": "latency", "4": "scale", "5": "candles", "6": "subscribers"}

System = Service | Baseline


@attrs.frozen
class Plan:
    """Sizes and durations of one bench run."""

    repeat: int
    warmup: float
    window: float
    feed_frames: int
    subscriber_counts: tuple[int, ...]
    latency_rates: tuple[int, ...]
    latency_window: dict[int, float]
    scale_symbols: int
    scale_streams_per_connection: int
    scale_trades: int
    scale_rate: float
    candle_ticks: int
    persist_rows: int

    @classmethod
    def full(cls, repeat: int) -> Plan:
        return cls(repeat=repeat, warmup=1.5, window=4.0, feed_frames=1_500_000, subscriber_counts=(1, 100),
                   latency_rates=(1_000, 5_000, 10_000),
                   latency_window={1_000: 10.0, 5_000: 4.0, 10_000: 4.0}, scale_symbols=1_500,
                   scale_streams_per_connection=750, scale_trades=1_000_000, scale_rate=12_500.0,
                   candle_ticks=200_000, persist_rows=200_000)

    @classmethod
    def quick(cls, repeat: int) -> Plan:
        return cls(repeat=repeat, warmup=0.7, window=1.5, feed_frames=400_000, subscriber_counts=(1, 100),
                   latency_rates=(1_000, 5_000, 10_000),
                   latency_window={1_000: 2.0, 5_000: 1.0, 10_000: 1.0}, scale_symbols=1_500,
                   scale_streams_per_connection=750, scale_trades=50_000, scale_rate=12_500.0,
                   candle_ticks=30_000, persist_rows=30_000)

    @classmethod
    def tiny(cls) -> Plan:
        """Minuscule sizes for the smoke test: every code path, no meaningful figure."""
        return cls(repeat=1, warmup=0.5, window=0.5, feed_frames=60_000, subscriber_counts=(1, 3),
                   latency_rates=(200,), latency_window={200: 0.5}, scale_symbols=20,
                   scale_streams_per_connection=10, scale_trades=300, scale_rate=300.0, candle_ticks=2_000,
                   persist_rows=2_000)


@attrs.define
class Result:
    row: str
    measure: str
    unit: str
    project: list[float] = attrs.field(factory=list)
    baseline: list[float] = attrs.field(factory=list)
    higher_is_better: bool = True
    target: str = ""
    note: str = ""

    def median(self, values: Sequence[float]) -> float | None:
        return statistics.median(values) if values else None

    @property
    def ratio(self) -> float | None:
        project, baseline = self.median(self.project), self.median(self.baseline)
        if project is None or baseline is None or baseline == 0:
            return None
        return project / baseline


# --- systems -------------------------------------------------------------------------------------------------


# The project's database: "file" (SQLite, WAL, in the run's temporary directory) or "memory"; set by --database.
DATABASE = {"kind": "file"}
# What the baseline column runs (--baseline): the seed's design, or the project with websockets' frame parser in
# place of its own (``bench.websockets_reader``).
BASELINE = {"kind": "seed"}
BASELINES = {"seed": "bench.baseline_seed", "websockets-reader": "bench.websockets_reader"}


async def start_system(kind: str, workdir: Path, ws_url: str, symbols: Sequence[str],
                       env: dict[str, str] | None = None, rest_url: str = NO_REST_URL) -> System:
    if kind == "project":
        return await start_service(workdir, ws_url, symbols, env, rest_url, DATABASE["kind"])
    if BASELINE["kind"] == "websockets-reader":
        return await start_service(workdir, ws_url, symbols, env, rest_url, DATABASE["kind"],
                                   module=BASELINES["websockets-reader"])
    return await start_baseline(workdir, ws_url, symbols)


def drain(child: Child) -> None:
    while not child.messages.empty():
        child.messages.get_nowait()


# --- row 1 and 2: capacity, fed at socket speed ----------------------------------------------------------------


async def ingest_capacity(kind: str, plan: Plan, workdir: Path, feeder: Child, info: dict[str, object],
                          integrity: list[str]) -> float:
    """Trades/s into the store; the project's integrity counters are appended to ``integrity``."""
    drain(feeder)
    system = await start_system(kind, workdir, str(info["ws_url"]), list(info["symbols"]))  # type: ignore[call-overload]
    try:
        await feeder.next_message("connected", within=30)
        await feeder.send_line("go")
        await asyncio.sleep(plan.warmup)
        before, started = await system.ticks_ingested(), time.perf_counter()
        await asyncio.sleep(plan.window)
        after, ended = await system.ticks_ingested(), time.perf_counter()
        if after >= int(info["frames"]) * 0.98:  # type: ignore[call-overload]
            log.warning("the feeder ran dry during the window: raise feed_frames")
        if isinstance(system, Service):
            integrity.append(await system.integrity())
        return (after - before) / (ended - started)
    finally:
        await system.stop()


async def end_to_end(kind: str, subscribers: int, plan: Plan, workdir: Path, feeder: Child,
                     info: dict[str, object]) -> tuple[float, float, int]:
    """(median, slowest) trades/s per subscriber, and how many subscribers were cut off."""
    drain(feeder)
    system = await start_system(kind, workdir, str(info["ws_url"]), list(info["symbols"]))  # type: ignore[call-overload]
    try:
        await feeder.next_message("connected", within=30)
        async with FeedSubscribers(system.feed_url, subscribers) as feed:
            await feeder.send_line("go")
            await asyncio.sleep(plan.warmup)
            before, started = feed.totals(), time.perf_counter()
            await asyncio.sleep(plan.window)
            after, ended = feed.totals(), time.perf_counter()
            cut_off = feed.cut_off()
        if cut_off:
            log.warning("%s: %d of %d subscribers cut off: %s", kind, len(cut_off), subscribers, cut_off[0])
        rates = [(b - a) / (ended - started) for a, b in zip(before, after, strict=True)]
        return statistics.median(rates), min(rates), len(cut_off)
    finally:
        await system.stop()


async def capacity_rows(plan: Plan, workdir: Path, rows: set[str], source: str) -> list[Result]:
    feeder, info = await start_feeder(workdir, source, plan.feed_frames, symbols=8)
    log.info("feeder ready source=%s symbols=%s frames=%s", source, ",".join(info["symbols"]), info["frames"])  # type: ignore[arg-type]
    results: list[Result] = []
    try:
        if "ingest" in rows:
            result = Result("1", "ingest capacity, no subscriber", "trades/s", target=">= 50,000 (project)")
            integrity: list[str] = []
            for number in range(plan.repeat):
                for kind in SYSTEMS:
                    rate = await ingest_capacity(kind, plan, workdir, feeder, info, integrity)
                    getattr(result, kind).append(rate)
                    log.info("ingest %s run=%d trades_per_s=%.0f", kind, number + 1, rate)
            result.note = (f"feed: {source}; counters: /health ticks_published, baseline stats; project after "
                           f"each run: {' | '.join(integrity)}")
            results.append(result)
        if "e2e" in rows:
            for subscribers in plan.subscriber_counts:
                label = "subscriber" if subscribers == 1 else "subscribers (each, median)"
                result = Result("2", f"end to end -> {subscribers} {label}", "trades/s",
                                target=">= 1.5x baseline" if subscribers == 1 else "")
                slowest: list[float] = []
                cut: list[int] = []
                for number in range(plan.repeat):
                    for kind in SYSTEMS:
                        median, minimum, cut_off = await end_to_end(kind, subscribers, plan, workdir, feeder, info)
                        getattr(result, kind).append(median)
                        if kind == "project":
                            slowest.append(minimum)
                            cut.append(cut_off)
                        log.info("e2e %s subscribers=%d run=%d median=%.0f slowest=%.0f cut_off=%d", kind,
                                 subscribers, number + 1, median, minimum, cut_off)
                if subscribers > 1:
                    result.note = f"project slowest subscriber {statistics.median(slowest):,.0f}/s; cut off {max(cut)}"
                results.append(result)
    finally:
        await feeder.stop()
    return results


# --- row 3: latency through the simulator -------------------------------------------------------------------------


async def latency_rows(plan: Plan, workdir: Path) -> list[Result]:
    results: list[Result] = []
    for rate in plan.latency_rates:
        arrivals = rate / FILLS_PER_ARRIVAL
        simulator, info = await start_simulator(workdir, ["--synthetic", "--symbols", "8", "--rate", f"{arrivals:.3f}"])
        symbols = list(info["symbols"])  # type: ignore[call-overload]
        tap_url = combined_stream_url(str(info["ws_base_url"]), [trade_stream(symbol) for symbol in symbols])
        per_quantile = {q: Result("3", f"latency p{q} at {rate:,}/s", "ms", higher_is_better=False)
                        for q in ("50", "99", "99.9")}
        for quantile, result in per_quantile.items():
            result.target = latency_target(rate, quantile)
        observed: list[float] = []
        missing = 0
        try:
            for number in range(plan.repeat):
                for kind in SYSTEMS:
                    system = await start_system(kind, workdir, str(info["ws_url"]), symbols,
                                                rest_url=str(info["rest_url"]))
                    try:
                        probe = await measure_latency(tap_url, system.feed_url, plan.warmup,
                                                      plan.latency_window[rate])
                    finally:
                        await system.stop()
                    latencies = probe.latencies_ms()
                    observed.append(len(probe.tap) / plan.latency_window[rate])
                    missing = max(missing, probe.missing())
                    if not latencies:
                        log.warning("latency %s rate=%d run=%d: no trade of the window reached the subscriber "
                                    "within 1 s after it", kind, rate, number + 1)
                        continue
                    for quantile, result in per_quantile.items():
                        getattr(result, kind).append(percentile(latencies, float(quantile) / 100))
                    log.info("latency %s rate=%d run=%d samples=%d p50=%.2f p99=%.2f p99.9=%.2f missing=%d", kind,
                             rate, number + 1, len(latencies), percentile(latencies, 0.5),
                             percentile(latencies, 0.99), percentile(latencies, 0.999), probe.missing())
        finally:
            await simulator.stop()
        per_quantile["50"].note = f"simulator sent {statistics.median(observed):,.0f} trades/s"
        if missing:
            per_quantile["99.9"].note = (f"up to {missing} trades of a window did not reach the subscriber within 1 s "
                                         "after it: percentiles cover the trades that did")
        results.extend(per_quantile.values())
    return results


def latency_target(rate: int, quantile: str) -> str:
    """Issue 16's goals: quiet markets get the trade at once, busy ones no later than the seed's design."""
    if rate <= 1_000:
        return "<= 0.2 ms" if quantile == "50" else ("<= baseline" if quantile == "99" else "")
    return "<= baseline"


# --- row 4: scale and memory --------------------------------------------------------------------------------------


async def scale_row(plan: Plan, workdir: Path) -> list[Result]:
    arrivals = plan.scale_rate / FILLS_PER_ARRIVAL
    simulator, info = await start_simulator(
        workdir, ["--synthetic", "--symbols", str(plan.scale_symbols), "--rate", f"{arrivals:.3f}"]
    )
    symbols = list(info["symbols"])  # type: ignore[call-overload]
    env = {"MAX_STREAMS_PER_CONNECTION": str(plan.scale_streams_per_connection)}
    samples: list[tuple[int, int, float]] = []  # (trades delivered, rss bytes, seconds)
    try:
        service = await start_system("project", workdir, str(info["ws_url"]), symbols, env, str(info["rest_url"]))
        assert isinstance(service, Service)
        try:
            cpu_before = cpu_seconds(service.pid)
            started = time.perf_counter()
            deadline = started + plan.scale_trades / plan.scale_rate * 1.5 + 20
            async with FeedSubscribers(service.feed_url, 1) as feed:
                while True:
                    delivered = feed.totals()[0]
                    samples.append((delivered, rss_bytes(service.pid), time.perf_counter() - started))
                    if delivered >= plan.scale_trades or feed.cut_off() or time.perf_counter() > deadline:
                        break
                    await asyncio.sleep(0.25)
                cut_off = feed.cut_off()
                first_at = feed.tallies[0].first_tick_at
            ended = time.perf_counter()
            elapsed = ended - started
            cpu = (cpu_seconds(service.pid) - cpu_before) / elapsed
            try:
                backlog = await service.backlog()
                ingested = await service.ticks_ingested()
                integrity = await service.integrity()
            except httpx.HTTPError as error:
                log.warning("scale: /health or /metrics did not answer: %r", error)
                ingested, integrity, backlog = -1, "unknown", "backlog unknown"
        finally:
            await service.stop()
    finally:
        await simulator.stop()
    warnings = service_warnings(service.child.log_path)
    for line in warnings[:5]:
        log.warning("scale: service said: %s", line[:300])
    delivered = samples[-1][0]
    streaming = ended - (first_at if first_at is not None else started)
    if cut_off or delivered < plan.scale_trades:
        log.warning("scale: %d of %d trades delivered; cut off: %s", delivered, plan.scale_trades, cut_off)
    # Memory after the first fifth (caches and buffers warmed up) against the end.
    warm = next((rss for count, rss, _ in samples if count >= delivered * 0.2), samples[0][1])
    final = samples[-1][1]
    peak = max(rss for _, rss, _ in samples)
    growth = final - warm
    flat = growth <= max(10 * 2**20, 0.05 * warm)
    # The second half alone: what is left once start-up effects are over (candle rings keep filling for hours,
    # ~1 KB per closed candle, 1,500 per minute per interval here; see bench/RESULTS.md).
    half = next((rss for count, rss, _ in samples if count >= delivered * 0.5), samples[0][1])
    per_100k = (final - half) / max(1, delivered - delivered // 2) * 100_000
    mb = 2**20
    return [
        Result("4", f"scale: {len(symbols):,} symbols / {plan.scale_streams_per_connection} per connection",
               "trades/s", project=[delivered / streaming],
               note=f"simulator paced at {plan.scale_rate:,.0f}/s; {delivered:,} trades delivered to 1 subscriber "
               f"({ingested:,} ingested) in {streaming:.0f} s from the first (start-up {elapsed - streaming:.1f} s); "
               f"service CPU {cpu:.0%} of a core; {len(warnings)} warnings in the service's log; {integrity}"),
        Result("4", "scale: RSS after 20% / at end / peak", "MB", project=[final / mb], higher_is_better=False,
               target="flat (growth <= max(10 MB, 5%))",
               note=f"{warm / mb:.1f} / {final / mb:.1f} / {peak / mb:.1f} MB: growth {growth / mb:+.1f} MB -> "
               + ("flat" if flat else "NOT flat")
               + f"; second half {(final - half) / mb:+.1f} MB ({per_100k / 1024:+.0f} KB per 100,000 trades); "
               f"at the end: {backlog}"),
    ]


# --- row 5: candles and persistence --------------------------------------------------------------------------------


async def candle_rows(plan: Plan, workdir: Path) -> list[Result]:
    ticks = await asyncio.to_thread(candles_bench.synthetic_ticks, max(plan.candle_ticks, plan.persist_rows))
    figures = [await asyncio.to_thread(candles_bench.measure, ticks, plan.candle_ticks, plan.persist_rows, workdir)
               for _ in range(plan.repeat)]
    log.info("candles %s", figures)
    count, packed, as_objects = await asyncio.to_thread(candles_bench.closed_candle_memory, plan.candle_ticks * 5)
    return [
        Result("5", "candle aggregator, 6 intervals (in-process)", "trades/s",
               project=[f.aggregator_per_s for f in figures], baseline=[f.baseline_aggregator_per_s for f in figures],
               note=f"intervals {','.join(candles_bench.INTERVALS)}; baseline: float OHLC callback"),
        Result("5", "persistence: ticks to SQLite (file, WAL)", "rows/s", project=[f.tick_rows_per_s for f in figures]),
        Result("5", "persistence: candles to SQLite (file, WAL)", "rows/s",
               project=[f.candle_rows_per_s for f in figures]),
        *await _storage_rows(plan, ticks[:plan.persist_rows], workdir),
        Result("5", "memory per closed candle in the ring", "bytes", project=[packed], baseline=[as_objects],
               higher_is_better=False, target="<= 200 (project)",
               note=f"tracemalloc, {count:,} closed candles of 20 symbols; baseline: the same candles as Candle "
               "objects (the ring before it packed them)"),
    ]


async def _storage_rows(plan: Plan, ticks: list[Tick], workdir: Path) -> list[Result]:
    figures = [await asyncio.to_thread(storage_bench.measure, ticks, workdir) for _ in range(plan.repeat)]
    log.info("storage %s", figures)
    check = figures[-1]
    results = [
        Result("5", "memory per tick held for a failing database", "bytes",
               project=[f.bytes_per_held_tick for f in figures], higher_is_better=False),
        Result("5", "start-up check of an SQLite file (WAL, quick_check)", "MB/s",
               project=[f.check_megabytes / f.check_seconds for f in figures],
               note=f"{check.check_megabytes:.1f} MB ({len(ticks):,} ticks) in {check.check_seconds:.2f} s"),
    ]
    postgres = [f for f in figures if f.postgres_tick_rows_per_s is not None]
    if not postgres:
        results[0].note = f"PostgreSQL rows skipped: no server at {storage_bench.ADMIN_URL}"
        return results
    return [
        Result("5", "persistence: ticks to PostgreSQL (COPY + ON CONFLICT)", "rows/s",
               project=[f.postgres_tick_rows_per_s or 0.0 for f in postgres]),
        Result("5", "persistence: candles to PostgreSQL (COPY + ON CONFLICT)", "rows/s",
               project=[f.postgres_candle_rows_per_s or 0.0 for f in postgres]),
        *results,
    ]


# --- row 6: many subscribers; the soak ------------------------------------------------------------------------------

# Sizes of row 6, chosen in main like the Plan.
SUBSCRIBERS = {"plan": subscribers_bench.SubscribersPlan.full()}
SOAK = {"minutes": 60.0}


async def subscriber_rows(workdir: Path) -> list[Result]:
    plan = SUBSCRIBERS["plan"]
    live = await subscribers_bench.live_subscribers(plan, workdir, DATABASE["kind"])
    log.info("subscribers %s", live)
    idle = await subscribers_bench.idle_connections(plan, workdir, DATABASE["kind"])
    log.info("idle %s", idle)
    kb = 1024
    return [
        Result("6", f"{live.clients:,} subscribers: trades not delivered", "trades", [live.trades_missing],
               higher_is_better=False, target="0",
               note=f"skipped ids, or behind the exchange's last id of the window 10 s "
               f"after it; {plan.processes} client processes, 1-3 of {plan.symbols} symbols each, simulator at "
               f"{live.exchange_per_s:,.0f} trades/s; per client {live.delivered_median_per_s:,.0f} trades/s median, "
               f"{live.delivered_min_per_s:,.0f} slowest; {live.clients_missing} clients missed trades, "
               f"{live.cut_off} cut off, {live.repeats} repeated; {live.warnings} warnings in the service's log"),
        Result("6", f"{live.clients:,} subscribers: latency p50", "ms", [live.p50_ms], higher_is_better=False),
        Result("6", f"{live.clients:,} subscribers: latency p99", "ms", [live.p99_ms], higher_is_better=False,
               target="<= 20 ms", note=f"p99.9 {live.p999_ms:.1f} ms over {live.samples:,} deliveries"),
        Result("6", f"{live.clients:,} subscribers: service CPU", "% core", [live.cpu * 100], higher_is_better=False,
               note=f"the client processes together: {live.clients_cpu:.0%} of a core, the simulator "
               f"{live.simulator_cpu:.0%} (2 cores in all here: the service gets what they leave)"),
        Result("6", f"{live.clients:,} subscribers: RSS per connection", "KB", [live.rss_per_connection / kb],
               higher_is_better=False, note=f"service RSS {live.rss_before / 2**20:.1f} -> "
               f"{live.rss_after / 2**20:.1f} MB with them connected, under load"),
        Result("6", f"{idle.connections:,} idle connections: RSS per connection", "KB",
               [idle.rss_per_connection / kb], higher_is_better=False, target="<= 50 KB",
               note=f"service RSS {idle.rss_before / 2**20:.1f} -> {idle.rss_after / 2**20:.1f} MB; "
               f"{idle.still_open:,} of {idle.connections:,} still open at the end"),
    ]


async def soak_rows(minutes: float, workdir: Path) -> list[Result]:
    soaked = await subscribers_bench.soak(minutes, workdir, DATABASE["kind"])
    return [Result("soak", f"soak: RSS growth after warm-up ({soaked.minutes:.0f} min)", "MB",
                   [soaked.growth / 2**20], higher_is_better=False, target="<= 5 MB over 1 hour",
                   note=f"{soaked.rate:,.0f} trades/s over {soaked.symbols} symbols; RSS {soaked.warm_rss / 2**20:.1f} "
                   f"MB at {soaked.warmup_minutes:.1f} min -> {soaked.final_rss / 2**20:.1f} MB at the end (peak "
                   f"{soaked.peak_rss / 2**20:.1f}), {soaked.growth_per_hour / 2**20:+.1f} MB/hour; "
                   f"{soaked.delivered:,} trades delivered to 1 subscriber ({soaked.delivered_per_s:,.0f}/s), "
                   f"{soaked.cut_off} cut off; {soaked.warnings} warnings; {soaked.integrity}")]


# --- the table -----------------------------------------------------------------------------------------------------


def _number(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "ms":
        return f"{value:.2f}"
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def _spread(values: Sequence[float], unit: str) -> str:
    if len(values) < 2:
        return ""
    return f"{_number(min(values), unit)}-{_number(max(values), unit)}"


def render_table(results: Sequence[Result], header: str) -> str:
    columns = ("row", "measure", "unit", "project", "(min-max)", "baseline", "(min-max)", "proj/base", "target")
    lines = [
        [r.row, r.measure, r.unit, _number(r.median(r.project), r.unit), _spread(r.project, r.unit),
         _number(r.median(r.baseline), r.unit), _spread(r.baseline, r.unit),
         "" if r.ratio is None else f"{r.ratio:.2f}x" + ("" if r.higher_is_better else " (lower=better)"),
         r.target]
        for r in results
    ]
    widths = [max(len(column), *(len(line[i]) for line in lines)) if lines else len(column)
              for i, column in enumerate(columns)]
    out = [header, "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip(),
           "  ".join("-" * w for w in widths)]
    out += ["  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in lines]
    notes = [f"  row {r.row} {r.measure}: {r.note}" for r in results if r.note]
    if notes:
        out += ["", "notes:", *notes]
    return "\n".join(out)


# --- entry point ---------------------------------------------------------------------------------------------------


def parse_rows(only: str | None) -> set[str]:
    if not only:
        return set(ROWS.values())
    chosen = set()
    for part in only.split(","):
        name = ROWS.get(part.strip(), part.strip())
        if name not in ROWS.values():
            choices = f"{', '.join(ROWS)} or {', '.join(ROWS.values())}"
            raise SystemExit(f"--only: unknown row {part!r}; choose from {choices}")
        chosen.add(name)
    return chosen


async def run_bench(plan: Plan, rows: set[str], workdir: Path, source: str) -> list[Result]:
    steps: list[tuple[str, Callable[[], Awaitable[list[Result]]]]] = []
    if rows & {"ingest", "e2e"}:
        steps.append(("capacity", lambda: capacity_rows(plan, workdir, rows, source)))
    if "latency" in rows:
        steps.append(("latency", lambda: latency_rows(plan, workdir)))
    if "scale" in rows:
        steps.append(("scale", lambda: scale_row(plan, workdir)))
    if "candles" in rows:
        steps.append(("candles", lambda: candle_rows(plan, workdir)))
    if "subscribers" in rows:
        steps.append(("subscribers", lambda: subscriber_rows(workdir)))
    if "soak" in rows:
        steps.append(("soak", lambda: soak_rows(SOAK["minutes"], workdir)))
    results: list[Result] = []
    for name, step in steps:
        started = time.perf_counter()
        log.info("step %s", name)
        try:
            results.extend(await step())
        except Exception as error:  # one failed step must not cost the figures of the others
            log.exception("step %s failed", name)
            results.append(Result("-", f"{name}: FAILED", "", note=f"{error!r}"[:300]))
        log.info("step %s done seconds=%.1f", name, time.perf_counter() - started)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a sanity run in under a minute")
    parser.add_argument("--repeat", type=int, help="runs per measurement; the table shows medians (default 3, "
                        "1 with --quick)")
    parser.add_argument("--only", metavar="ROW", help="comma-separated rows: 1-5 or ingest,e2e,latency,scale,candles")
    parser.add_argument("--source", choices=("recording", "synthetic"),
                        help="the market feeding rows 1-2 (default: the shipped recording if present)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write every figure as JSON to PATH")
    parser.add_argument("--scale-rate", type=float, metavar="N", help="row 4: trades/s (default 12,500)")
    parser.add_argument("--scale-trades", type=int, metavar="N", help="row 4: trades to run (default 1,000,000)")
    parser.add_argument("--database", choices=("file", "memory"), default="file",
                        help="the service's SQLite database: a file in a temporary directory (default) or :memory:")
    parser.add_argument("--baseline", choices=tuple(BASELINES), default="seed",
                        help="the baseline column: the seed's design (default), or the project with websockets' "
                        "sans-I/O frame parser in place of its own (rows 1-3)")
    parser.add_argument("--keep", action="store_true", help="keep the processes' logs and databases")
    parser.add_argument("--soak", action="store_true", help="run only the soak: 5,000 trades/s over 500 symbols, "
                        "RSS growth after warm-up")
    parser.add_argument("--soak-minutes", type=float, default=60.0, metavar="N", help="the soak's length (default 60)")
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s",
                        stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if args.tiny:
        plan = Plan.tiny()
    elif args.quick:
        plan = Plan.quick(args.repeat or 1)
    else:
        plan = Plan.full(args.repeat or 3)
    if args.scale_rate is not None:
        plan = attrs.evolve(plan, scale_rate=args.scale_rate)
    if args.scale_trades is not None:
        plan = attrs.evolve(plan, scale_trades=args.scale_trades)
    source = args.source or ("recording" if DEMO_RECORDING.is_file() else "synthetic")
    rows = {"soak"} if args.soak else parse_rows(args.only)
    SOAK["minutes"] = args.soak_minutes
    SUBSCRIBERS["plan"] = (subscribers_bench.SubscribersPlan.tiny() if args.tiny else
                           subscribers_bench.SubscribersPlan.quick() if args.quick else
                           subscribers_bench.SubscribersPlan.full())
    DATABASE["kind"] = args.database
    BASELINE["kind"] = args.baseline
    started = time.perf_counter()
    if args.keep:
        directory = tempfile.mkdtemp(prefix="marketdata-bench-")
        log.info("keeping logs and databases in %s", directory)
        results = asyncio.run(run_bench(plan, rows, Path(directory), source))
    else:
        with tempfile.TemporaryDirectory(prefix="marketdata-bench-") as directory:
            results = asyncio.run(run_bench(plan, rows, Path(directory), source))
    elapsed = time.perf_counter() - started
    header = (f"marketdata bench ({'quick' if args.quick else 'tiny' if args.tiny else 'full'}, "
              f"medians of {plan.repeat}, {elapsed:.0f} s, baseline: {BASELINES[args.baseline]})")
    print(render_table(results, header))
    if args.json is not None:
        document = {"header": header, "seconds": elapsed, "results": [attrs.asdict(result) for result in results]}
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
