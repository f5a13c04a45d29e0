"""Pacing of the control messages (SUBSCRIBE, UNSUBSCRIBE, LIST_SUBSCRIPTIONS) sent on one connection.

Binance closes a connection that receives more than 5 messages per second, counting pings, pongs and JSON
requests; clients pacing at exactly 5/s were still cut off, so the total stays at 4/s or below. The stream
socket answers the server's pings by itself (one every 20 s at Binance), so requests get 3 slots per sliding
second and the automatic pong always finds the fourth free.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable

import attrs
import trio

CONTROL_MESSAGES_PER_WINDOW = 3
# A little over a second: the server measures when it reads, so requests sent a second apart can arrive
# bunched by network and scheduling jitter; the margin keeps them apart at the server too.
CONTROL_WINDOW_SECONDS = 1.1

SendText = Callable[[str], Awaitable[None]]


@attrs.define
class SlidingWindow:
    """At most ``limit`` events in any half-open interval of ``window`` seconds (pure: the caller passes ``now``)."""

    limit: int = CONTROL_MESSAGES_PER_WINDOW
    window: float = CONTROL_WINDOW_SECONDS
    _sent: deque[float] = attrs.field(factory=deque, init=False)

    def delay(self, now: float) -> float:
        """Seconds until one more event fits (0.0: it fits now)."""
        while self._sent and self._sent[0] + self.window <= now:
            self._sent.popleft()
        if len(self._sent) < self.limit:
            return 0.0
        return self._sent[0] + self.window - now

    def record(self, now: float) -> None:
        self._sent.append(now)


class Pacer:
    """Serialises senders and spaces them by a ``SlidingWindow`` on Trio's clock (``MockClock``-friendly)."""

    def __init__(self, window: SlidingWindow | None = None) -> None:
        self._window = window if window is not None else SlidingWindow()
        self._lock = trio.StrictFIFOLock()
        self.waited_seconds = 0.0

    async def send(self, send: SendText, message: str) -> None:
        """Send ``message`` with ``send`` as soon as the window allows; callers are served first come, first served."""
        async with self._lock:
            while (delay := self._window.delay(trio.current_time())) > 0:
                self.waited_seconds += delay
                await trio.sleep(delay)
            # Record before sending: a send that fails half-way may still have reached the server.
            self._window.record(trio.current_time())
            await send(message)

