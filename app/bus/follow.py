"""Reading a bus stream from a position, with every lost entry said out loud.

Each entry carries a sequence number given by the publish script; a reader that finds a number missing knows
entries were trimmed (``MAXLEN``) before it read them, or that the server restarted empty, and reports a
``StreamGap`` instead of skipping silently.
"""

from __future__ import annotations

import logging
from typing import Any

import attrs
import trio

from app.bus.connection import BUS_UNAVAILABLE

log = logging.getLogger(__name__)

START = b"0-0"


@attrs.frozen(slots=True)
class StreamPosition:
    """Where a reader is: the last entry id read and its sequence number (0 before the first entry)."""

    entry_id: bytes = START
    sequence: int = 0


@attrs.frozen(slots=True)
class BusEntry:
    entry_id: bytes
    sequence: int
    payload: bytes


@attrs.frozen(slots=True)
class StreamGap:
    """Entries ``first_sequence..last_sequence`` were gone before this reader got to them."""

    stream: str
    first_sequence: int
    last_sequence: int
    reason: str


async def stream_end(redis: Any, stream: str) -> StreamPosition:
    """The position of the stream's newest entry: a snapshot taken after this misses nothing read from it."""
    newest = await redis.xrevrange(stream, count=1)
    if not newest:
        return StreamPosition()
    entry = newest[0]
    return StreamPosition(entry.identifier, int(entry.field_values[b"s"]))


def check_sequence(stream: str, position: StreamPosition, sequence: int) -> StreamGap | None:
    """The gap before an entry numbered ``sequence`` read after ``position``, if any (pure)."""
    expected = position.sequence + 1
    if sequence == expected or (position.sequence == 0 and position.entry_id == START):
        return None
    if sequence > expected:
        return StreamGap(stream, expected, sequence - 1, "trimmed before it was read (reader too far behind)")
    return StreamGap(stream, expected, sequence - 1, "the bus restarted: its streams began again")


async def follow_stream(
    redis: Any,
    stream: str,
    payload_field: bytes,
    position: StreamPosition,
    out: trio.MemorySendChannel[list[BusEntry | StreamGap]],
    *,
    batch_entries: int = 500,
    block_ms: int = 1000,
    retry_seconds: float = 0.5,
) -> None:
    """Sends every entry after ``position`` to ``out``, in order, with a ``StreamGap`` where entries were lost.

    Runs until cancelled; an unreachable Redis is retried (logged once per outage) from the same position.
    """
    async with out:
        outage = False
        while True:
            try:
                reply = await redis.xread({stream: position.entry_id}, count=batch_entries, block=block_ms)
            except BUS_UNAVAILABLE as error:
                if not outage:
                    log.warning("bus unreachable stream=%s error=%s: retrying", stream, error)
                outage = True
                await trio.sleep(retry_seconds)
                continue
            if outage:
                log.warning("bus reachable again stream=%s", stream)
                outage = False
            if not reply:
                continue
            items: list[BusEntry | StreamGap] = []
            for entry in reply.get(stream.encode(), ()):
                sequence = int(entry.field_values[b"s"])
                gap = check_sequence(stream, position, sequence)
                if gap is not None:
                    log.error("bus entries lost stream=%s entries=%d..%d reason=%s", stream, gap.first_sequence,
                              gap.last_sequence, gap.reason)
                    items.append(gap)
                items.append(BusEntry(entry.identifier, sequence, entry.field_values[payload_field]))
                position = StreamPosition(entry.identifier, sequence)
            await out.send(items)
