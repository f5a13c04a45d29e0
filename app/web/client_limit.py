"""``MAX_WS_CLIENTS``: how many ``/ws`` clients are served at once; the next are refused before the upgrade."""

from __future__ import annotations

import logging

import attrs
import trio

from app.ingest.log_throttle import LogThrottle

log = logging.getLogger(__name__)


@attrs.define
class ClientLimit:
    """Counts the ``/ws`` clients admitted (from the handshake to the end of the session) and those refused."""

    limit: int
    current: int = 0
    refused: int = 0
    _log_throttle: LogThrottle = attrs.Factory(LogThrottle)

    def admit(self) -> bool:
        """Takes a place for one client, or counts a refusal (logged, throttled) when all are taken."""
        if self.current < self.limit:
            self.current += 1
            return True
        self.refused += 1
        held_back = self._log_throttle.allow(trio.current_time())
        if held_back is not None:
            log.warning("websocket_refused clients=%d limit=%d refused_total=%d held_back=%d: MAX_WS_CLIENTS reached",
                        self.current, self.limit, self.refused, held_back)
        return False

    def release(self) -> None:
        self.current -= 1
