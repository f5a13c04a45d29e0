"""Test harness for the web layer: the real app served by Hypercorn on loopback, over real store parts.

``running_web`` builds a ServiceState from the real TickHub, CandleBuilder, SQLite storage (in memory) and
IngestStatus, runs the hub's fan-out and a candle-building consumer, serves the app on 127.0.0.1 port 0, and
hands the test a channel to publish ticks on (``harness.publish``) as ingestion would.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from decimal import Decimal
from functools import partial
from typing import Any

import attrs
import trio

from app.backoff import Backoff, BackoffPolicy
from app.ingest.status import IngestStatus
from app.intervals import Interval
from app.model import Candle, Tick
from app.settings import Settings
from app.state import ServiceState
from app.store.aggregator import CandleFeed, aggregate
from app.store.latest import OverflowPolicy, TickHub, fan_out
from app.store.persist import persist_candles
from app.store.sqlite import SQLiteStorage
from app.store.storage import Storage
from app.web.app import create_app
from app.web.feed import FeedLimits
from app.web.server import serve_http

# 2024-08-08 23:55:00 UTC, the start of a minute.
T0_MS = 1_723_161_300_000


def make_ticks(
    symbol: str, first_id: int, count: int, start_ms: int = T0_MS, step_ms: int = 100, price: str = "61000.10"
) -> list[Tick]:
    base = Decimal(price)
    return [
        Tick(
            symbol=symbol,
            price=base + Decimal(index % 7) / 100,
            quantity=Decimal("0.00100000") * (1 + index % 3),
            trade_time_ms=start_ms + index * step_ms,
            event_time_ms=start_ms + index * step_ms + 1,
            trade_id=first_id + index,
            is_buyer_maker=index % 2 == 0,
        )
        for index in range(count)
    ]


# Trades per batch in ``Harness.publish``: about what one 64 KiB socket read of trade frames holds.
READ_BATCH = 300


@attrs.define
class Harness:
    state: ServiceState
    base_url: str
    ws_url: str
    ticks: trio.MemorySendChannel[list[Tick]]
    # The database writer's input, when the harness was asked for one that nobody reads (``writer_buffer``).
    writer_input: trio.MemoryReceiveChannel[Sequence[Tick]] | None = None

    async def publish(self, ticks: Sequence[Tick]) -> None:
        """Sends ``ticks`` as ingestion does: in batches of at most one socket read's worth."""
        for start in range(0, len(ticks), READ_BATCH):
            await self.ticks.send(list(ticks[start : start + READ_BATCH]))

    async def publish_and_settle(self, ticks: Sequence[Tick]) -> None:
        """Publishes ``ticks`` and returns once the hub and the candle builder have taken all of them."""
        target = self.state.hub.ticks_published + len(ticks)
        await self.publish(ticks)
        await wait_until(lambda: self.state.hub.ticks_published >= target)
        last = ticks[-1]
        interval = self.state.settings.candle_intervals[0].name
        await wait_until(lambda: _has_trade(self.state.candles.open_candle(last.symbol, interval), last.trade_id))


def _has_trade(candle: Candle | None, trade_id: int) -> bool:
    return candle is not None and candle.last_trade_id >= trade_id


# How often ``wait_until`` looks again: short next to any test's bound, long enough to leave the CPU to the
# tasks it waits for (yielding with checkpoint() alone kept a core busy).
POLL_SECONDS = 0.002


async def wait_until(predicate: Callable[[], bool]) -> None:
    """Returns once ``predicate`` holds, looking every ``POLL_SECONDS``; bound it with ``fail_after``."""
    while not predicate():  # noqa: ASYNC110 (the counters it reads have no event to wait on)
        await trio.sleep(POLL_SECONDS)


def web_settings(**changes: object) -> Settings:
    base = Settings(
        symbols=("BTCUSDT", "ETHUSDT"),
        candle_intervals=(Interval("1m"), Interval("5m")),
        http_host="127.0.0.1",
        http_port=0,
        database_url="sqlite:///:memory:",
    )
    return attrs.evolve(base, **changes)  # type: ignore[arg-type]


@asynccontextmanager
async def running_web(
    settings: Settings | None = None,
    feed_limits: FeedLimits | None = None,
    recent_candles: int = 1000,
    storage: Storage | None = None,
    writer_buffer: int | None = None,
    **app_options: Any,
) -> AsyncIterator[Harness]:
    """The app over the real parts; ``storage`` (SQLite in memory by default) is closed at the end;
    ``writer_buffer``: a database writer's subscription of that size that nobody reads (for /health);
    ``app_options`` go to ``create_app``."""
    settings = settings or web_settings()
    storage = storage or await SQLiteStorage.open(":memory:")
    hub = TickHub()
    candles = CandleFeed(settings.candle_intervals, recent_limit=recent_candles)
    ingest = IngestStatus()
    persistence, writer_input = (None, None) if writer_buffer is None else hub.subscribe(
        "persistence", writer_buffer, OverflowPolicy.BACKPRESSURE)
    state = ServiceState(settings=settings, hub=hub, candles=candles, storage=storage, ingest=ingest,
                         persistence=persistence)
    ticks_send, ticks_receive = trio.open_memory_channel[list[Tick]](1024)
    closed_send, closed_receive = trio.open_memory_channel[Sequence[Candle]](1024)
    _, candle_input = hub.subscribe("aggregator", 256, OverflowPolicy.BACKPRESSURE)
    try:
        async with trio.open_nursery() as nursery:
            urls = await nursery.start(serve_http, create_app(state, feed_limits, **app_options), "127.0.0.1", 0)
            base_url = urls[0]
            nursery.start_soon(fan_out, ticks_receive, hub)
            nursery.start_soon(partial(aggregate, candle_input, closed_send, candles, is_live=ingest.is_live))
            nursery.start_soon(persist_candles, closed_receive, storage, state.persist,
                               Backoff(BackoffPolicy(start=0.5, cap=30.0)))
            yield Harness(state, base_url, base_url.replace("http://", "ws://") + "/ws", ticks_send, writer_input)
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await storage.close()


def check_schema(value: object, schema: dict[str, Any], document: dict[str, Any], path: str = "$") -> None:
    """A small JSON-Schema check (the subset the OpenAPI document uses); raises AssertionError with the path."""
    if "$ref" in schema:
        name = schema["$ref"].removeprefix("#/components/schemas/")
        check_schema(value, document["components"]["schemas"][name], document, path)
        return
    if "oneOf" in schema:
        matches = 0
        for option in schema["oneOf"]:
            try:
                check_schema(value, option, document, path)
                matches += 1
            except AssertionError:
                pass
        assert matches == 1, f"{path}: {value!r} matches {matches} of oneOf"
        return
    types = schema.get("type")
    if types is not None:
        allowed = types if isinstance(types, list) else [types]
        assert any(_is_type(value, kind) for kind in allowed), f"{path}: {value!r} is not {allowed}"
    if "enum" in schema:
        assert value in schema["enum"], f"{path}: {value!r} not in {schema['enum']}"
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema:
            assert value >= schema["minimum"], f"{path}: {value} < minimum"
        if "maximum" in schema:
            assert value <= schema["maximum"], f"{path}: {value} > maximum"
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        for key in schema.get("required", []):
            assert key in value, f"{path}: missing {key!r}"
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            if key in properties:
                check_schema(item, properties[key], document, f"{path}.{key}")
            elif extra is False:
                raise AssertionError(f"{path}: unexpected property {key!r}")
            elif isinstance(extra, dict):
                check_schema(item, extra, document, f"{path}.{key}")
    if isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            check_schema(item, schema["items"], document, f"{path}[{index}]")


def _is_type(value: object, kind: str) -> bool:
    if kind == "null":
        return value is None
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, int | float | Decimal) and not isinstance(value, bool)
    if kind == "string":
        return isinstance(value, str)
    if kind == "array":
        return isinstance(value, list)
    if kind == "object":
        return isinstance(value, dict)
    raise AssertionError(f"unknown schema type {kind}")
