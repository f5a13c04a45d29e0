"""``python -m bench.dashboard_bench``: the dashboard in headless Chromium while the service ingests a busy market.

The simulator's synthetic market (``--rate`` trades/s over ``--symbols`` symbols) feeds the service; the page is
open on it, subscribed to every tick and to the candles of one symbol. Over ``--seconds`` it reports, from the
page's own counters (``window.marketdata.stats()``) and an independent requestAnimationFrame counter: renders
per animation frame (at most 1 by design), ticks and feed messages received per second, the JS heap before and
after (flat if no work queues up), and long tasks (main-thread work over 50 ms). Needs Chromium
(``apt-get install -y chromium``) and Playwright (the test extras). Everything binds 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from app.replay.sources import FILLS_PER_ARRIVAL
from bench.procs import NO_REST_URL, start_feeder, start_service, start_simulator

log = logging.getLogger("bench.dashboard")

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]

# Counts animation frames independently of the page, and main-thread tasks over 50 ms.
PROBE = """() => {
  window.benchProbe = { frames: 0, longTasks: 0, longTaskMs: 0 };
  const count = () => { window.benchProbe.frames += 1; requestAnimationFrame(count); };
  requestAnimationFrame(count);
  new PerformanceObserver((list) => {
    for (const entry of list.getEntries()) {
      window.benchProbe.longTasks += 1;
      window.benchProbe.longTaskMs += entry.duration;
    }
  }).observe({ type: "longtask" });
}"""
SAMPLE = """() => ({ ...window.marketdata.stats(), ...window.benchProbe,
  heap: performance.memory ? performance.memory.usedJSHeapSize : null, now: performance.now() })"""


async def ticks_published(client: httpx.AsyncClient) -> int:
    body = (await client.get("/health")).json()
    return int(body["ticks_published"])


async def measure(rate: float, symbols: int, seconds: float, workdir: Path, feeder_frames: int) -> dict[str, Any]:
    from playwright.async_api import async_playwright

    if feeder_frames:
        # Unpaced: the service ingests at its capacity, the page gets all of it.
        simulator, info = await start_feeder(workdir, "synthetic", feeder_frames, symbols)
        info["rest_url"] = NO_REST_URL
    else:
        simulator, info = await start_simulator(
            workdir, ["--synthetic", "--symbols", str(symbols), "--rate", f"{rate / FILLS_PER_ARRIVAL:.3f}"])
    try:
        names = list(info["symbols"])  # type: ignore[call-overload]
        service = await start_service(workdir, str(info["ws_url"]), names, rest_url=str(info["rest_url"]),
                                      database="memory")
        try:
            async with async_playwright() as playwright, httpx.AsyncClient(base_url=service.http_url) as client:
                browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                page = await browser.new_page(viewport={"width": 1400, "height": 900})
                errors: list[str] = []
                page.on("pageerror", lambda error: errors.append(str(error)))
                await page.goto(f"{service.http_url}/?symbol={names[0]}&interval=1m")
                await page.wait_for_function("() => window.marketdata.feedState() === 'live'")
                if feeder_frames:
                    # The feeder holds its frames until told: the page is open before the flood starts.
                    await simulator.next_message("connected", within=30)
                    await simulator.send_line("go")
                await asyncio.sleep(3)  # warm-up: history loaded, JIT warm, the flood under way
                await page.evaluate(PROBE)
                await page.evaluate("() => { if (window.gc) window.gc(); }")
                first, published_first = await page.evaluate(SAMPLE), await ticks_published(client)
                await asyncio.sleep(seconds)
                last, published_last = await page.evaluate(SAMPLE), await ticks_published(client)
                await browser.close()
        finally:
            await service.stop()
    finally:
        await simulator.stop()
    elapsed = (last["now"] - first["now"]) / 1000
    return {
        "offered_trades_per_second": "unpaced (feeder)" if feeder_frames else rate,
        "ingested_before_window": published_first,
        "ingested_trades_per_second": (published_last - published_first) / elapsed,
        "page_ticks_per_second": (last["ticks"] - first["ticks"]) / elapsed,
        "feed_messages_per_second": (last["feedMessages"] - first["feedMessages"]) / elapsed,
        "animation_frames_per_second": last["frames"] / elapsed,
        "renders_per_second": (last["renders"] - first["renders"]) / elapsed,
        "renders_per_frame": (last["renders"] - first["renders"]) / max(1, last["frames"]),
        "long_tasks": last["longTasks"],
        "long_task_ms": round(last["longTaskMs"], 1),
        "heap_mb_start": None if first["heap"] is None else round(first["heap"] / 2**20, 1),
        "heap_mb_end": None if last["heap"] is None else round(last["heap"] / 2**20, 1),
        "page_errors": errors,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dashboard_bench", description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=10_000, help="trades per second offered [10000]")
    parser.add_argument("--symbols", type=int, default=8, help="symbols of the synthetic market [8]")
    parser.add_argument("--seconds", type=float, default=20, help="measured window [20]")
    parser.add_argument("--feeder", type=int, default=0, metavar="FRAMES",
                        help="feed FRAMES pre-rendered trades at socket speed instead of the paced simulator")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if not Path(CHROMIUM).is_file():
        print("bench.dashboard_bench needs Chromium: apt-get install -y chromium", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="marketdata-dashboard-bench-") as directory:
        figures = asyncio.run(measure(args.rate, args.symbols, args.seconds, Path(directory), args.feeder))
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
