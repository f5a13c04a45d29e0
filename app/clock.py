"""The wall clock in epoch milliseconds, the unit of Binance's trade and event times."""

from __future__ import annotations

import time


def wall_clock_ms() -> int:
    """Milliseconds since the epoch from the system clock. Tasks take it as a parameter (``clock_ms``,
    ``wall_ms``) so that tests can set the time."""
    return time.time_ns() // 1_000_000
