"""The exchange simulator (``app.replay``) in a process of its own, for the bench to drive.

Once listening it prints one JSON line on stdout: ``{"ws_url", "ws_base_url", "rest_url", "symbols"}``. Each
``stats`` line on stdin is answered with ``{"published": N, "frames_sent": M}``. SIGTERM stops it.

Run: ``python -m bench.sim_process --synthetic --symbols 8 --rate 1000`` or
``python -m bench.sim_process --recording FILE --speed 0 --loop``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import trio

from app.replay.config import ReplaySource, SimulatorConfig, Source, SyntheticSource
from app.replay.simulator import Simulator, run_simulator

log = logging.getLogger("bench.sim_process")


def _emit(message: dict[str, object]) -> None:
    print(json.dumps(message), flush=True)


async def _answer_stats(simulator: Simulator) -> None:
    stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    buffer = b""
    async with stdin:
        while chunk := await stdin.receive_some(4096):
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                if line.strip() == b"stats":
                    stats = simulator.stats
                    _emit({"published": stats.published_trades, "frames_sent": stats.frames_sent,
                           "connections": stats.open_connections})


async def run(source: Source) -> None:
    # The ledger serves REST backfill for gap repair: enough for any gap of a bench run, without holding
    # every trade of a million-trade run.
    config = SimulatorConfig(source=source, retained_trades=100_000)
    async with trio.open_nursery() as nursery:
        simulator: Simulator = await nursery.start(run_simulator, config)
        _emit({"ws_url": simulator.ws_url, "ws_base_url": simulator.ws_base_url, "rest_url": simulator.rest_url,
               "symbols": list(simulator.symbols)})
        nursery.start_soon(_answer_stats, simulator)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                break
        nursery.cancel_scope.cancel()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sim_process", description=__doc__.splitlines()[0])
    parser.add_argument("--synthetic", action="store_true")
    parser.add_argument("--symbols", type=int, default=8)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--recording", type=Path)
    parser.add_argument("--speed", type=float, default=1.0)
    parser.add_argument("--loop", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    source: Source
    if args.synthetic:
        source = SyntheticSource(symbols=args.symbols, rate=args.rate, seed=args.seed)
    elif args.recording is not None:
        source = ReplaySource(args.recording, speed=args.speed, loop=args.loop)
    else:
        parser.error("give --synthetic or --recording FILE")
    trio.run(run, source)
    return 0


if __name__ == "__main__":
    sys.exit(main())
