"""Placeholder until the simulator lands: the lead's stub, to be replaced by the simulator's CLI."""

from __future__ import annotations

import argparse
from typing import Any


def add_simulate_command(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser("simulate", help="run the exchange simulator")
    parser.set_defaults(func=lambda args: 2)


def add_record_command(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser("record", help="record a Binance stream")
    parser.set_defaults(func=lambda args: 2)
