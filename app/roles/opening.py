"""What a role process opens before its tasks start and closes after they end: the bus client here; the api and
persist roles open the database beside it with ``closing_storage``::

    bus_url = required_bus_url(settings, "persist")
    async with closing_storage(open_storage(settings)) as storage, open_bus(bus_url) as redis:
        ...
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from app.bus.connection import check_server, redis_client
from app.settings import Settings


def required_bus_url(settings: Settings, role: str) -> str:
    """``BUS_URL``, which every role needs (the command line refuses to start without it)."""
    if settings.bus_url is None:
        raise ValueError(f"marketdata {role} needs BUS_URL")
    return settings.bus_url


@asynccontextmanager
async def open_bus(url: str) -> AsyncIterator[Any]:
    """A Redis client for ``url``, checked first (one-line ``BusError`` when unreachable or too old)."""
    async with redis_client(url) as redis:
        await check_server(redis, url)
        yield redis

