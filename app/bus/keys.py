"""Every Redis key the service uses, under one prefix (so deployments and tests can share a server)."""

from __future__ import annotations

import attrs


@attrs.frozen(slots=True)
class BusKeys:
    prefix: str = "marketdata"

    @property
    def ticks(self) -> str:
        """Stream of tick batches from every shard (one entry per published batch)."""
        return f"{self.prefix}:ticks"

    @property
    def candles(self) -> str:
        """Stream of candle updates (open candles as they change, closed ones, revisions)."""
        return f"{self.prefix}:candles"

    @property
    def last_trade_ids(self) -> str:
        """Hash symbol -> the last published trade id: where a new leader resumes."""
        return f"{self.prefix}:last-trade-id"

    @property
    def latest_ticks(self) -> str:
        """Hash symbol -> the latest published tick (bus format)."""
        return f"{self.prefix}:latest"

    @property
    def candle_state(self) -> str:
        """Hash ``SYMBOL|interval`` -> the newest version of the symbol's current candle (bus format)."""
        return f"{self.prefix}:candle-state"

    def sequence(self, stream: str) -> str:
        """Counter of a stream's entries: each entry carries the next number, so a reader sees trimmed ones."""
        return f"{stream}:seq"

    def lease(self, shard: str) -> str:
        """The lease of one ingest shard (value: the leader's token; expires unless renewed)."""
        return f"{self.prefix}:lease:{shard}"
