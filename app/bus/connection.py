"""Connecting to the bus (Redis ≥ 7 or Valkey) through coredis, which runs natively under Trio."""

from __future__ import annotations

from typing import Any

import coredis
from coredis.exceptions import ConnectionError as RedisConnectionError

# What a lost or unreachable Redis raises; callers retry these with backoff and let everything else propagate.
BUS_UNAVAILABLE: tuple[type[BaseException], ...] = (OSError, RedisConnectionError)


class BusError(RuntimeError):
    """The bus cannot be used (unreachable at start-up, too old a server); the message says what to do."""


def redis_client(url: str) -> Any:
    """A client for ``redis://HOST:PORT/DB`` (bytes in, bytes out). Use it as ``async with``."""
    return coredis.Redis.from_url(url, decode_responses=False)


async def check_server(redis: Any, url: str) -> None:
    """Fails with one line when the server cannot be reached or lacks what the service relies on."""
    try:
        info = await redis.info("server")
    except BUS_UNAVAILABLE as error:
        raise BusError(f"cannot reach the bus at {url}: {error} (is Redis running? set BUS_URL)") from None
    version = str(info.get("redis_version", "0"))
    if int(version.split(".")[0]) < 7:
        raise BusError(f"the bus at {url} runs Redis {version}; Redis 7 or newer (or Valkey) is needed")
