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
        """Hash ``SYMBOL|interval`` -> the newest version of the series' current candle, after the closed ones
        late trades may still revise (bus format, oldest first)."""
        return f"{self.prefix}:candle-state"

    def sequence(self, stream: str) -> str:
        """Counter of a stream's entries: each entry carries the next number, so a reader sees trimmed ones."""
        return f"{stream}:seq"

    @property
    def symbol_requests(self) -> str:
        """Stream of symbol changes asked for at run time (``POST``/``DELETE /api/symbols`` on a replica)."""
        return f"{self.prefix}:symbol-requests"

    @property
    def symbol_changes(self) -> str:
        """Stream of the symbol changes the leaders made (``added``/``removed``): how every replica learns them."""
        return f"{self.prefix}:symbol-changes"

    @property
    def added_symbols(self) -> str:
        """Hash symbol -> when it was added at run time: what an ingest process subscribes at start besides its
        configured symbols."""
        return f"{self.prefix}:added-symbols"

    def symbol_reply(self, request_id: str) -> str:
        """List where the owning shard's leader answers one symbol request."""
        return f"{self.prefix}:symbol-reply:{request_id}"

    def lease(self, shard: str) -> str:
        """The lease of one ingest shard (value: the leader's token; expires unless renewed)."""
        return f"{self.prefix}:lease:{shard}"
