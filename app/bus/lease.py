"""One leader per ingest shard: a Redis key holding the leader's token, with a TTL the leader keeps renewing.

Acquire is ``SET NX PX``; renew and release compare the token first (a script, atomic in Redis), so a process
that lost its lease cannot extend or delete its successor's. Losing the lease is only half the story: a frozen
leader does not know it lost it, which is why every publish checks the token again (``app.bus.publish``).
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

import attrs
import trio
from coredis import PureToken

from app.bus.connection import BUS_UNAVAILABLE

log = logging.getLogger(__name__)

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def new_token(name: str) -> str:
    """A token no other process holds: the process's name for the logs, and randomness for uniqueness."""
    return f"{name}:{secrets.token_hex(8)}"


@attrs.frozen(slots=True)
class LeaseTimings:
    ttl_seconds: float = 3.0

    @property
    def renew_every(self) -> float:
        # Three renewals per TTL: one lost round trip does not cost the lease.
        return self.ttl_seconds / 3

    @property
    def poll_every(self) -> float:
        # A standby asks often enough to take over well within a second after expiry.
        return min(0.25, self.ttl_seconds / 4)


class Lease:
    """The lease of one shard as seen by one process (its ``token``)."""

    def __init__(self, redis: Any, key: str, token: str, timings: LeaseTimings) -> None:
        self.redis = redis
        self.key = key
        self.token = token
        self.timings = timings
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)

    @property
    def ttl_ms(self) -> int:
        return max(1, round(self.timings.ttl_seconds * 1000))

    async def try_acquire(self) -> bool:
        return bool(await self.redis.set(self.key, self.token, condition=PureToken.NX, px=self.ttl_ms))

    async def renew(self) -> bool:
        return bool(await self._renew(keys=[self.key], args=[self.token, self.ttl_ms]))

    async def release(self) -> None:
        await self._release(keys=[self.key], args=[self.token])

    async def holder(self) -> str | None:
        value = await self.redis.get(self.key)
        return None if value is None else value.decode() if isinstance(value, bytes) else str(value)


async def campaign(lease: Lease, leadership: trio.MemorySendChannel[bool]) -> None:
    """Runs for the life of the process: acquires the lease when it is free, renews it while held, and sends
    True on becoming leader and False on losing it. A renewal that fails, or Redis unreachable for a whole TTL,
    ends the leadership (the publish fence would refuse this process anyway)."""
    async with leadership:
        leading = False
        last_renewed = 0.0
        while True:
            try:
                if leading:
                    renewed = await lease.renew()
                    if renewed:
                        last_renewed = trio.current_time()
                else:
                    renewed = await lease.try_acquire()
                    if renewed:
                        last_renewed = trio.current_time()
                        leading = True
                        log.warning("lease acquired key=%s token=%s", lease.key, lease.token)
                        await leadership.send(True)
                        continue
                if leading and not renewed:
                    leading = False
                    log.error("lease lost key=%s token=%s holder=%s", lease.key, lease.token, await lease.holder())
                    await leadership.send(False)
            except BUS_UNAVAILABLE as error:  # Redis unreachable: keep trying
                log.warning("lease check failed key=%s error=%s", lease.key, error)
                if leading and trio.current_time() - last_renewed >= lease.timings.ttl_seconds:
                    leading = False
                    log.error("lease expired while Redis was unreachable key=%s", lease.key)
                    await leadership.send(False)
            await trio.sleep(lease.timings.renew_every if leading else lease.timings.poll_every)
