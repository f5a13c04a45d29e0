"""When to try connecting again: exponential backoff with full jitter, and Binance's connection-attempt budget.

Both are pure (the caller passes ``now`` and a random source), so they are tested without a clock; the
connection task sleeps for what they return.
"""

from __future__ import annotations

import random

import attrs

from app.ingest.pacer import SlidingWindow

BACKOFF_START_SECONDS = 0.5
BACKOFF_CAP_SECONDS = 30.0
# A connection that stayed up for this long resets the backoff to its start.
HEALTHY_AFTER_SECONDS = 60.0
# Binance: 300 connection attempts per 5 minutes per IP. Keep a margin for other clients on the same IP.
CONNECT_ATTEMPTS_PER_WINDOW = 250
CONNECT_WINDOW_SECONDS = 300.0


@attrs.define
class Backoff:
    """Full-jitter exponential backoff ("AWS architecture blog": sleep = uniform(0, min(cap, start * 2**n)))."""

    start: float = BACKOFF_START_SECONDS
    cap: float = BACKOFF_CAP_SECONDS
    rng: random.Random = attrs.field(factory=random.Random)
    failures: int = 0

    def ceiling(self) -> float:
        """The upper bound of the next delay."""
        return min(self.cap, self.start * 2.0 ** min(self.failures, 64))

    def next_delay(self) -> float:
        """The delay before the next attempt; each call counts one more failure."""
        delay = self.rng.uniform(0.0, self.ceiling())
        self.failures += 1
        return delay

    def reset(self) -> None:
        """After a healthy connection (see ``ConnectionHandle.was_healthy``): start from the bottom again."""
        self.failures = 0


@attrs.define
class AttemptBudget(SlidingWindow):
    """At most ``limit`` connection attempts in any ``window`` seconds (a sliding window, shared by all shards)."""

    limit: int = CONNECT_ATTEMPTS_PER_WINDOW
    window: float = CONNECT_WINDOW_SECONDS
