"""The ordered way out: every task that has ticks ready (connections, backfills) emits through one ``Emitter``.

Ticks leave in batches, in the order they were handed over, whichever task hands them over: a batch goes
straight into the channel only when nothing is queued before it; otherwise it joins the queue, and one task at
a time (the flusher) sends the queue in order, waiting when the channel is full. Producers whose ticks are
queued wait until the queue has drained, so a full channel slows every producer down (backpressure) and
nothing is dropped.
"""

from __future__ import annotations

from collections import deque

import trio

from app.model import Tick


class Emitter:
    def __init__(self, out: trio.MemorySendChannel[list[Tick]]) -> None:
        self._out = out
        self.queue: deque[list[Tick]] = deque()
        self._flushing = False
        self._flushed = trio.Event()

    def try_send(self, ticks: list[Tick]) -> bool:
        """Sends ``ticks`` at once if nothing is queued and the channel has room (the hot path)."""
        if self.queue:
            return False
        try:
            self._out.send_nowait(ticks)
        except trio.WouldBlock:
            return False
        return True

    def enqueue(self, ticks: list[Tick]) -> None:
        """Queues a batch behind everything handed over before (no waiting: call ``flush`` next). The emitter
        owns ``ticks`` from now on."""
        if ticks:
            self.queue.append(ticks)

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
                    batch = queue[0]
                    try:
                        out.send_nowait(batch)
                    except trio.WouldBlock:
                        # A cancelled send sends nothing, so the batch stays first in line.
                        await out.send(batch)
                    queue.popleft()
            finally:
                self._flushing = False
                self._flushed.set()
                self._flushed = trio.Event()

    async def emit(self, ticks: list[Tick]) -> None:
        if not self.try_send(ticks):
            self.enqueue(ticks)
            await self.flush()
