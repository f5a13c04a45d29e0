"""The ordered way out: every task that has ticks ready (connections, backfills) emits through one ``Emitter``.

Ticks leave in the order they were handed over, whichever task hands them over: a tick goes straight into the
channel only when nothing is queued before it; otherwise it joins the queue, and one task at a time (the
flusher) sends the queue in order, waiting when the channel is full. Producers whose ticks are queued wait
until the queue has drained, so a full channel slows every producer down (backpressure) and nothing is dropped.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

import trio

from app.model import Tick


class Emitter:
    def __init__(self, out: trio.MemorySendChannel[Tick]) -> None:
        self._out = out
        self.queue: deque[Tick] = deque()
        self._flushing = False
        self._flushed = trio.Event()

    def try_send(self, tick: Tick) -> bool:
        """Sends ``tick`` at once if nothing is queued and the channel has room (the hot path)."""
        if self.queue:
            return False
        try:
            self._out.send_nowait(tick)
        except trio.WouldBlock:
            return False
        return True

    def enqueue(self, ticks: Iterable[Tick]) -> None:
        """Queues ticks behind everything handed over before (no waiting: call ``flush`` next)."""
        self.queue.extend(ticks)

    async def flush(self) -> None:
        """Returns once everything queued so far has been sent (by this task or the current flusher)."""
        queue = self.queue
        while queue:
            if self._flushing:
                await self._flushed.wait()
                continue
            self._flushing = True
            try:
                out = self._out
                while queue:
                    tick = queue[0]
                    try:
                        out.send_nowait(tick)
                    except trio.WouldBlock:
                        # A cancelled send sends nothing, so the tick stays first in line.
                        await out.send(tick)
                    queue.popleft()
            finally:
                self._flushing = False
                self._flushed.set()
                self._flushed = trio.Event()

    async def emit(self, tick: Tick) -> None:
        if not self.try_send(tick):
            self.queue.append(tick)
            await self.flush()
