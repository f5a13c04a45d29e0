"""When a shard tries connecting again: its backoff policy, when a connection counts as healthy, and Binance's
connection-attempt budget.

Pure (the caller passes ``now``; the backoff takes a random source), so they are tested without a clock; the
shard task sleeps for what they return.
"""

from __future__ import annotations

import attrs

from app.backoff import BackoffPolicy
from app.ingest.pacer import SlidingWindow

# Full jitter: after an exchange-side outage every shard (and every other client) reconnects at once otherwise.
RECONNECT_BACKOFF = BackoffPolicy(start=0.5, cap=30.0, jitter=True)
# A connection that stayed up for this long resets the backoff to its start.
HEALTHY_AFTER_SECONDS = 60.0
# Binance: 300 connection attempts per 5 minutes per IP. Keep a margin for other clients on the same IP.
CONNECT_ATTEMPTS_PER_WINDOW = 250
CONNECT_WINDOW_SECONDS = 300.0


@attrs.define
class AttemptBudget(SlidingWindow):
    """At most ``limit`` connection attempts in any ``window`` seconds (a sliding window, shared by all shards)."""

    limit: int = CONNECT_ATTEMPTS_PER_WINDOW
    window: float = CONNECT_WINDOW_SECONDS
