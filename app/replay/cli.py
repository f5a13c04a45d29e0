"""The ``simulate`` sub-command; ``app/cli.py`` adds it to ``marketdata``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import trio

import app
from app.replay.config import Faults, Limits, ReplaySource, SimulatorConfig, Source, SyntheticSource
from app.replay.simulator import Simulator, run_simulator
from app.startup import startup_error

log = logging.getLogger(__name__)

SHIPPED_RECORDINGS = Path(app.__file__).resolve().parent / "data"


def shipped_recording(name: str) -> Path | None:
    """A recording shipped in the package, by file name or stem (``demo-binance-2024-08-08``)."""
    for candidate in (SHIPPED_RECORDINGS / name, SHIPPED_RECORDINGS / f"{name}.rec.zst"):
        if candidate.is_file():
            return candidate
    return None


def _configure_logging(level: str) -> None:
    # The top-level CLI may have configured logging already; then its choice stands.
    if not logging.getLogger().handlers:
        logging.basicConfig(level=level.upper(), stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s %(message)s")


def add_simulate_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "simulate",
        help="run the Binance-compatible exchange simulator alone",
        description="Serve a recording or a synthetic market over Binance's WebSocket and REST protocols "
        "on loopback. Shipped recordings: " + ", ".join(sorted(p.name for p in SHIPPED_RECORDINGS.glob("*.rec.*"))),
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--recording", help="recording file, or the name of a shipped recording")
    source.add_argument("--synthetic", action="store_true", help="a seeded synthetic market")
    parser.add_argument("--speed", type=float, default=1.0, help="replay speed; 0 = as fast as possible")
    parser.add_argument("--loop", action="store_true", help="repeat the recording, ids and times shifted")
    parser.add_argument("--symbols", type=int, default=3, help="synthetic: number of symbols")
    parser.add_argument("--rate", type=float, default=10.0, help="synthetic: trades per second, all symbols")
    parser.add_argument("--seed", type=int, default=0, help="synthetic: random seed")
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to bind")
    parser.add_argument("--port", type=int, default=0, help="WebSocket port (0: any free port)")
    parser.add_argument("--rest-port", type=int, default=0, help="REST port (0: any free port)")
    parser.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    parser.add_argument("--drop-after", type=int, default=None, help="fault: reset connections after N frames")
    parser.add_argument("--drop-probability", type=float, default=0.0, help="fault: reset chance per frame")
    parser.add_argument("--malformed-probability", type=float, default=0.0,
                        help="fault: chance of a malformed frame after each frame")
    parser.add_argument("--fault-seed", type=int, default=0)
    parser.add_argument("--break-symbols", type=_symbol_list, default=(),
                        help="fault: comma-separated symbols in BREAK (listed, not trading)")
    parser.add_argument("--delist-symbols", type=_symbol_list, default=(),
                        help="fault: comma-separated symbols delisted (exchangeInfo omits them, REST -1121)")
    parser.add_argument("--stop-symbols-after", type=float, default=None, metavar="SECONDS",
                        help="fault: apply --break-symbols/--delist-symbols this long after start (default: at once)")
    parser.add_argument("--ping-interval", type=float, default=20.0)
    parser.add_argument("--pong-timeout", type=float, default=60.0)
    parser.add_argument("--weight-limit", type=int, default=6000, help="REST request weight per minute")
    parser.add_argument("--retained-trades", type=int, default=1_000_000, help="trades kept per symbol")
    parser.add_argument("--log-level", default="WARNING")
    parser.set_defaults(func=simulate_command)


def _symbol_list(text: str) -> tuple[str, ...]:
    return tuple(symbol.strip().upper() for symbol in text.split(",") if symbol.strip())


def simulator_config(args: argparse.Namespace) -> SimulatorConfig:
    source: Source
    if args.synthetic:
        source = SyntheticSource(symbols=args.symbols, rate=args.rate, seed=args.seed, speed=args.speed)
    else:
        path = Path(args.recording)
        if not path.is_file():
            path = shipped_recording(args.recording) or path
        source = ReplaySource(path=path, speed=args.speed, loop=args.loop)
    return SimulatorConfig(
        source=source,
        host=args.host,
        ws_port=args.port,
        rest_port=args.rest_port,
        limits=Limits(ping_interval=args.ping_interval, pong_timeout=args.pong_timeout,
                      rest_weight_per_minute=args.weight_limit),
        faults=Faults(drop_after_frames=args.drop_after, drop_probability=args.drop_probability,
                      malformed_probability=args.malformed_probability, seed=args.fault_seed,
                      break_symbols=args.break_symbols, delisted_symbols=args.delist_symbols,
                      symbols_stop_after=args.stop_symbols_after),
        retained_trades=args.retained_trades,
    )


async def _simulate(config: SimulatorConfig, duration: float | None) -> None:
    async with trio.open_nursery() as nursery:
        simulator: Simulator = await nursery.start(run_simulator, config)
        streams = [f"{symbol.lower()}@trade" for symbol in simulator.symbols[:3]]
        # The one place output goes to stdout: where to connect.
        print(f"websocket {simulator.ws_url}", flush=True)
        print(f"combined  {simulator.stream_url(*streams)}", flush=True)
        print(f"rest      {simulator.rest_url}", flush=True)
        if duration is not None:
            await trio.sleep(duration)
            nursery.cancel_scope.cancel()


def simulate_command(args: argparse.Namespace) -> int:
    _configure_logging(args.log_level)
    try:
        config = simulator_config(args)
        trio.run(_simulate, config, args.duration)
    except KeyboardInterrupt:
        return 0
    except (OSError, ValueError) as error:
        log.error("simulator failed: %s", error)
        return 1
    except BaseExceptionGroup as group:
        problem = startup_error(group)
        if problem is not None:
            print(f"marketdata simulate: {problem}", file=sys.stderr)
            return 2
        failures, others = group.split((OSError, ValueError))
        if others is not None or failures is None:
            raise
        log.error("simulator failed: %s", failures.exceptions[0])
        return 1
    return 0
