"""``marketdata persist``: the bus's ticks and closed candles into the database, exactly once in effect.

    Redis streams ──XREADGROUP (group "persist")──▶ write (idempotent) ──commit──▶ XACK
                   └─XAUTOCLAIM (entries a dead persister left pending)──┘

Any number of persisters share the group; an entry is acknowledged only after its rows are committed, so a
persister killed at any point loses nothing (its pending entries are claimed by another after
``CLAIM_IDLE_MS``) and writes nothing twice in effect (ticks are keyed by (symbol, trade id), candles by
(symbol, interval, open time) and replaced only by a newer revision).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any, TypeVar

import attrs
import trio

from app.backoff import Backoff
from app.bus.connection import BUS_UNAVAILABLE
from app.bus.consume import acknowledge, claim_stale, ensure_group, read_new
from app.bus.follow import BusEntry
from app.bus.keys import BusKeys
from app.convert import candles_from_bus, ticks_from_bus
from app.roles.opening import open_bus, required_bus_url
from app.roles.signals import stop_on_signal
from app.settings import Settings
from app.store.persist import STORAGE_RETRY, until_written
from app.store.storage import Storage, StorageWriteError, closing_storage
from app.web.role_app import create_role_app
from app.web.server import serve_http

log = logging.getLogger(__name__)

T = TypeVar("T")

GROUP = "persist"
# Entries pending this long belong to a persister that died (a live one acknowledges within seconds).
CLAIM_IDLE_MS = 15_000
CLAIM_EVERY_SECONDS = 5.0
READ_ENTRIES = 200


@attrs.define
class PersisterStatus:
    ticks_written: int = 0
    candles_written: int = 0
    entries_acknowledged: int = 0
    entries_claimed: int = 0
    write_failures: int = 0
    bus_errors: int = 0


async def run_persist(
    settings: Settings,
    open_storage: Callable[[Settings], Awaitable[Storage]],
    *,
    task_status: trio.TaskStatus[Sequence[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    bus_url = required_bus_url(settings, "persist")
    keys = BusKeys(settings.bus_prefix)
    consumer = f"persist-{socket.gethostname()}-{os.getpid()}"
    status = PersisterStatus()
    async with closing_storage(open_storage(settings)) as storage, open_bus(bus_url) as redis:
        app = create_role_app("persist", lambda: (True, attrs.asdict(status)),
                              {"writer": status})
        async with trio.open_nursery() as nursery:
            urls = await nursery.start(serve_http, app, settings.http_host, settings.http_port)
            log.warning("role=persist consumer=%s database=%s urls=%s", consumer, settings.database_url,
                        ",".join(urls))
            nursery.start_soon(stop_on_signal, nursery.cancel_scope, "persist")
            nursery.start_soon(persist_from_bus, redis, keys, consumer, storage, status)
            task_status.started(urls)


async def persist_from_bus(
    redis: Any,
    keys: BusKeys,
    consumer: str,
    storage: Storage,
    status: PersisterStatus,
    *,
    claim_idle_ms: int = CLAIM_IDLE_MS,
    claim_every_seconds: float = CLAIM_EVERY_SECONDS,
) -> None:
    """Runs until cancelled: claims what dead persisters left, reads what is new, writes, acknowledges."""
    streams = {keys.ticks: b"t", keys.candles: b"c"}
    for stream in streams:
        await ensure_group(redis, stream, GROUP)
    next_claim = trio.current_time()
    while True:
        try:
            if trio.current_time() >= next_claim:
                next_claim = trio.current_time() + claim_every_seconds
                for stream, field in streams.items():
                    claimed = await claim_stale(redis, GROUP, consumer, stream, field, min_idle_ms=claim_idle_ms,
                                                count=READ_ENTRIES)
                    if claimed:
                        status.entries_claimed += len(claimed)
                        log.warning("claimed entries a persister left pending stream=%s entries=%d", stream,
                                    len(claimed))
                        await _write_and_ack(redis, stream, claimed, storage, keys, status)
            for batch in await read_new(redis, GROUP, consumer, streams, count=READ_ENTRIES, block_ms=1000):
                await _write_and_ack(redis, batch.stream, batch.entries, storage, keys, status)
        except BUS_UNAVAILABLE as error:
            status.bus_errors += 1
            log.warning("bus unreachable error=%s: retrying (entries stay pending in the group)", error)
            await trio.sleep(1.0)


async def _write_and_ack(redis: Any, stream: str, entries: Sequence[BusEntry], storage: Storage, keys: BusKeys,
                         status: PersisterStatus) -> None:
    if stream == keys.ticks:
        ticks = [tick for entry in entries for tick in ticks_from_bus(entry.payload)]
        await _until_written(storage.write_ticks, ticks, status)
        status.ticks_written += len(ticks)
    else:
        closed = [candle for entry in entries for candle in candles_from_bus(entry.payload) if candle.closed]
        await _until_written(storage.write_candles, closed, status)
        status.candles_written += len(closed)
    await acknowledge(redis, GROUP, stream, entries)
    status.entries_acknowledged += len(entries)


async def _until_written(write: Callable[[T], Awaitable[None]], rows: T, status: PersisterStatus) -> None:
    """Writes ``rows``, retrying with the storage backoff; the entries stay pending in the group meanwhile."""

    def failed(error: StorageWriteError) -> None:
        status.write_failures += 1
        log.warning("write failed error=%s (retrying with backoff; the entries stay pending)", error)

    await until_written(partial(write, rows), Backoff(STORAGE_RETRY), failed)
