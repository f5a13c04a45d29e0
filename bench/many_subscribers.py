"""``python -m bench.many_subscribers``: many subscribed ``/ws`` clients at once, all receiving.

The simulator's synthetic market (8 symbols, paced) feeds the service started as users start it
(``python -m app serve``, ``MAX_WS_CLIENTS`` = the client count); the bench's clients (asyncio + ``websockets``,
counting trades) each subscribe to every symbol. Reported: how long connecting and subscribing took, trades/s per
client over the window (median and slowest, against what the simulator sent), clients cut off, and the service's
resident memory and CPU.
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
from collections.abc import Sequence
from pathlib import Path

from app.replay.sources import FILLS_PER_ARRIVAL
from bench.clients import FeedSubscribers
from bench.procs import cpu_seconds, rss_bytes, start_service, start_simulator

log = logging.getLogger("bench.many_subscribers")



async def measure(clients: int, rate: float, warmup: float, window: float, workdir: Path) -> dict[str, object]:
    simulator, info = await start_simulator(
        workdir, ["--synthetic", "--symbols", "8", "--rate", f"{rate / FILLS_PER_ARRIVAL:.3f}"])
    try:
        symbols = list(info["symbols"])  # type: ignore[call-overload]
        service = await start_service(workdir, str(info["ws_url"]), symbols, {"MAX_WS_CLIENTS": str(clients)},
                                      str(info["rest_url"]))
        try:
            rss_idle = rss_bytes(service.pid)
            started = time.perf_counter()
            async with FeedSubscribers(service.feed_url, clients) as feed:
                connected = time.perf_counter() - started
                await asyncio.sleep(warmup)
                before, cpu_before, window_start = feed.totals(), cpu_seconds(service.pid), time.perf_counter()
                await asyncio.sleep(window)
                after, cpu_after, window_end = feed.totals(), cpu_seconds(service.pid), time.perf_counter()
                rss_busy = rss_bytes(service.pid)
                cut_off = feed.cut_off()
        finally:
            await service.stop()
    finally:
        await simulator.stop()
    seconds = window_end - window_start
    rates = [(b - a) / seconds for a, b in zip(before, after, strict=True)]
    return {
        "clients": clients,
        "rate_target": rate,
        "connect_and_subscribe_seconds": round(connected, 2),
        "per_client_trades_per_s_median": round(statistics.median(rates)),
        "per_client_trades_per_s_slowest": round(min(rates)),
        "clients_receiving": sum(1 for value in rates if value > 0),
        "cut_off": len(cut_off),
        "service_rss_mb_idle": round(rss_idle / 2**20, 1),
        "service_rss_mb_with_clients": round(rss_busy / 2**20, 1),
        "service_cpu_share": round((cpu_after - cpu_before) / seconds, 2),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.many_subscribers", description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=1000.0, help="trades/s the simulator sends (default 1,000)")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--window", type=float, default=10.0)
    parser.add_argument("--keep", type=Path, metavar="DIR", help="keep the processes' logs in DIR")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s",
                        stream=sys.stderr)
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        result = asyncio.run(measure(args.clients, args.rate, args.warmup, args.window, args.keep))
    else:
        with tempfile.TemporaryDirectory(prefix="marketdata-bench-") as directory:
            result = asyncio.run(measure(args.clients, args.rate, args.warmup, args.window, Path(directory)))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
