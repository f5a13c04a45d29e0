"""Consumer groups: many persisters share the streams, each entry written by one, acknowledged after commit.

A persister killed between reading and acknowledging leaves its entries pending; ``claim_stale`` hands entries
pending longer than ``min_idle_ms`` to a live consumer, so nothing read is ever lost (writes are idempotent, so
an entry written twice is harmless).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import attrs
from coredis.exceptions import StreamDuplicateConsumerGroupError

from app.bus.follow import BusEntry


@attrs.frozen(slots=True)
class GroupEntries:
    stream: str
    entries: tuple[BusEntry, ...]


async def ensure_group(redis: Any, stream: str, group: str) -> None:
    """Creates ``group`` reading ``stream`` from its first entry (and the stream, if new); an existing group
    is kept where it is."""
    with contextlib.suppress(StreamDuplicateConsumerGroupError):
        await redis.xgroup_create(stream, group, "0", mkstream=True)


def _entries(raw: Sequence[Any], field: bytes) -> tuple[BusEntry, ...]:
    return tuple(BusEntry(entry.identifier, int(entry.field_values[b"s"]), entry.field_values[field])
                 for entry in raw if entry.field_values)


async def read_new(
    redis: Any, group: str, consumer: str, streams: dict[str, bytes], *, count: int, block_ms: int
) -> list[GroupEntries]:
    """Entries never delivered to the group, from each stream (``streams``: stream -> payload field)."""
    reply = await redis.xreadgroup(group, consumer, {stream: ">" for stream in streams}, count=count,
                                   block=block_ms)
    if not reply:
        return []
    return [GroupEntries(key.decode(), _entries(raw, streams[key.decode()])) for key, raw in reply.items()]


async def claim_stale(
    redis: Any, group: str, consumer: str, stream: str, field: bytes, *, min_idle_ms: int, count: int
) -> tuple[BusEntry, ...]:
    """Entries of ``stream`` pending (read, not acknowledged) for at least ``min_idle_ms``, now this
    consumer's."""
    claimed: list[BusEntry] = []
    start = "0-0"
    while True:
        reply = await redis.xautoclaim(stream, group, consumer, min_idle_ms, start, count=count)
        start, raw = reply[0], reply[1]
        claimed += _entries(raw, field)
        if start in (b"0-0", "0-0") or not raw:
            return tuple(claimed)


async def acknowledge(redis: Any, group: str, stream: str, entries: Sequence[BusEntry]) -> None:
    if entries:
        await redis.xack(stream, group, [entry.entry_id for entry in entries])
