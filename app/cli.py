"""The ``marketdata`` command: ``serve``, ``demo``, ``simulate``, ``record``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import trio

from app import service
from app.settings import (
    Settings,
    SettingsError,
    add_settings_flags,
    configure_logging,
    flag_overrides,
    load_settings,
)
from app.startup import startup_error

log = logging.getLogger("app")

def _settings_from(args: argparse.Namespace) -> Settings:
    return load_settings(overrides=flag_overrides(args))


def _serve(args: argparse.Namespace) -> int:
    settings = _settings_from(args)
    configure_logging(settings.log_level)
    log.info("starting symbols=%s ws=%s", ",".join(settings.symbols), settings.binance_ws_url)
    return run_service(settings)


def run_service(settings: Settings) -> int:
    """Run the service to the end; 0 after a signal, 2 when it cannot start (one line), 1 after a crash (logged
    with its traceback)."""
    try:
        trio.run(service.run, settings)
    except KeyboardInterrupt:
        return 0
    except BaseException as error:  # the top: log every crash, exit non-zero
        problem = startup_error(error)
        if problem is not None:
            return _cannot_start(str(problem))
        log.critical("service crashed: %r", error, exc_info=error)
        return 1
    log.info("stopped cleanly")
    return 0


def _cannot_start(message: str) -> int:
    print(f"marketdata: {message}", file=sys.stderr)
    return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="marketdata",
        description="Binance trade ingestion: exact ticks and candles over HTTP and WebSocket.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="run the service against Binance (or a simulator)",
        description="Connect to Binance's trade streams and serve ticks and candles. Settings come from "
        "the environment and .env; each flag overrides its variable.",
    )
    add_settings_flags(serve)
    serve.set_defaults(func=_serve)
    _add_optional_commands(commands)
    return parser


def _add_optional_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Commands from other modules, each adding its own sub-parser."""
    from app.demo import add_demo_command
    from app.ingest.record import add_record_command
    from app.replay.cli import add_simulate_command
    from app.roles.commands import add_role_commands

    add_demo_command(commands)
    add_role_commands(commands)
    add_simulate_command(commands)
    add_record_command(commands)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        exit_code: int = args.func(args)
    except SettingsError as error:
        print(f"marketdata: {error}", file=sys.stderr)
        return 2
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
