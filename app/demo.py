"""``marketdata demo``: the exchange simulator replaying the shipped recording, and the service fed by it.

One nursery runs both on loopback: the simulator loops the real Binance trades in
``app/data/demo-binance-2024-08-08.rec.zst`` (ids and times shifted forward on each pass), and the service
connects to it as it would to Binance, keeping its SQLite database in a temporary directory (a fresh replay
must not meet the trade ids of an earlier run). SIGINT/SIGTERM stop the service as usual (draining the
pipeline); the simulator is stopped after it.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

import attrs
import trio

from app import service
from app.replay.cli import shipped_recording
from app.replay.config import ReplaySource, SimulatorConfig
from app.replay.simulator import Simulator, run_simulator
from app.settings import Settings, add_settings_flags, configure_logging, flag_overrides, load_settings
from app.startup import startup_error
from app.web.admin import AdminAccess

log = logging.getLogger(__name__)

DEMO_RECORDING = "demo-binance-2024-08-08.rec.zst"

@attrs.frozen(slots=True)
class DemoOptions:
    settings: Settings
    recording: Path
    # Replay speed: 1 is the recording's own pace; 10 is ten times faster.
    speed: float = 1.0


def add_demo_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "demo",
        help="run the service on a replay of real Binance trades, no network needed",
        description="Start the exchange simulator replaying the shipped recording of real Binance BTCUSDT and "
        "ETHUSDT trades (2024-08-08) in a loop on loopback, and the service connected to it, then print URLs "
        "to try (the dashboard's first). Stop with Ctrl-C.",
    )
    add_settings_flags(parser, demo=True, demo_defaults={"DATABASE_URL": "a temporary file, deleted at exit"})
    parser.add_argument("--speed", type=_positive_speed, default=1.0,
                        help="replay speed: 1 = as recorded, 10 = ten times faster [default 1]")
    parser.add_argument("--recording", default=DEMO_RECORDING,
                        help=f"recording file, or the name of a shipped one [default {DEMO_RECORDING}]")
    parser.set_defaults(func=demo_command)


def _positive_speed(text: str) -> float:
    try:
        speed = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < speed <= 1000:
        raise argparse.ArgumentTypeError("the speed must be > 0 and <= 1000")
    return speed


def demo_command(args: argparse.Namespace) -> int:
    overrides = flag_overrides(args)
    # Hermetic: the demo does not read .env or the environment (a SYMBOLS=... there would not match the recording).
    settings = load_settings(environ={}, overrides=overrides, dotenv_path=None)
    configure_logging(settings.log_level)
    recording = Path(args.recording)
    if not recording.is_file():
        shipped = shipped_recording(args.recording)
        if shipped is None:
            print(f"marketdata demo: no recording {args.recording!r}", file=sys.stderr)
            return 2
        recording = shipped
    options = DemoOptions(settings=settings, recording=recording, speed=args.speed)
    try:
        with tempfile.TemporaryDirectory(prefix="marketdata-demo-") as directory:
            if getattr(args, "DATABASE_URL", None) is None:
                options = attrs.evolve(options, settings=attrs.evolve(
                    settings, database_url=f"sqlite:///{Path(directory) / 'demo.sqlite3'}"))
            trio.run(run_demo, options, sys.stdout)
    except KeyboardInterrupt:
        return 0
    except BaseException as error:  # the top: log every crash, exit non-zero
        problem = startup_error(error)
        if problem is not None:
            print(f"marketdata demo: {problem}", file=sys.stderr)
            return 2
        log.critical("demo crashed: %r", error, exc_info=error)
        return 1
    return 0


async def run_demo(
    options: DemoOptions,
    out: TextIO,
    *,
    task_status: trio.TaskStatus[Sequence[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Runs the simulator and the service until the service stops (on a signal); reports the API's URLs."""
    config = SimulatorConfig(source=ReplaySource(path=options.recording, speed=options.speed, loop=True))
    async with trio.open_nursery() as nursery:
        simulator: Simulator = await nursery.start(run_simulator, config)
        settings = attrs.evolve(
            options.settings,
            symbols=simulator.symbols,
            binance_ws_url=simulator.ws_url,
            binance_rest_url=simulator.rest_url,
        )
        urls: Sequence[str] = await nursery.start(_service_then_stop, settings, nursery.cancel_scope)
        out.write(instructions(urls[0], simulator, options))
        out.flush()
        task_status.started(urls)


async def _service_then_stop(
    settings: Settings, stop: trio.CancelScope, *, task_status: trio.TaskStatus[Sequence[str]]
) -> None:
    await service.run(settings, task_status=task_status)
    # The service stopped (a signal): the simulator has nobody to serve.
    stop.cancel()


def instructions(api_url: str, simulator: Simulator, options: DemoOptions) -> str:
    symbols = simulator.symbols
    first = symbols[0] if symbols else "BTCUSDT"
    interval = options.settings.candle_intervals[0].name
    ws_url = api_url.replace("http://", "ws://", 1) + "/ws"
    return "\n".join([
        f"Dashboard: {api_url}/",
        f"marketdata demo: replaying {options.recording.name} ({', '.join(symbols)}) in a loop at speed "
        f"{options.speed:g}",
        f"  exchange simulator  {simulator.ws_url}  (REST {simulator.rest_url})",
        f"  API                 {api_url}",
        "",
        "Try:",
        f"  curl {api_url}/api/ticks",
        f"  curl {api_url}/api/ticks/{first}",
        f"  curl '{api_url}/api/candles/{first}?interval={interval}&limit=5'",
        f"  curl {api_url}/api/symbols",
        f"  curl {api_url}/health",
        f"  curl {api_url}/metrics",
        f"  curl {api_url}/openapi.json",
        f"  python -m websockets {ws_url}",
        f'    > {{"op": "subscribe", "channel": "ticks", "symbols": ["{first}"]}}',
        f'    > {{"op": "subscribe", "channel": "candles", "symbols": ["*"], "interval": "{interval}"}}',
        "",
        *change_examples(api_url, symbols[-1] if symbols else "ETHUSDT", options.settings),
        "",
        "Stop with Ctrl-C.",
        "",
    ])


def change_examples(api_url: str, symbol: str, settings: Settings) -> list[str]:
    """How to change the subscriptions, with the admin token when one is set (README: Security)."""
    access = AdminAccess(token=settings.admin_token, host=settings.http_host)
    if access.disabled:
        return ["Changing subscriptions is disabled: the API listens beyond loopback and no --admin-token is set."]
    if access.token is None:
        intro = "Change subscriptions (open on loopback; with --admin-token TOKEN they need the token):"
        auth = ""
    else:
        intro = "Change subscriptions with the admin token given as --admin-token:"
        auth = "-H 'Authorization: Bearer TOKEN' "
    return [
        intro,
        f"  curl -X DELETE {auth}{api_url}/api/symbols/{symbol}",
        f"  curl -X POST {auth}-H 'Content-Type: application/json' -d '{{\"symbol\": \"{symbol}\"}}' "
        f"{api_url}/api/symbols",
    ]
