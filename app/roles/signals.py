"""How a role process stops: SIGINT or SIGTERM cancels its nursery (each role's ``finally`` releases what it holds)."""

from __future__ import annotations

import logging
import signal

import trio

log = logging.getLogger(__name__)


async def stop_on_signal(scope: trio.CancelScope, role: str) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.warning("role=%s received %s: stopping", role, signal.Signals(signum).name)
            scope.cancel()
            return
