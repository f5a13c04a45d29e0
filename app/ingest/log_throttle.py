"""Rate-limited logging for per-frame trouble: one line per interval, with the count of lines held back."""

from __future__ import annotations

import attrs

LOG_INTERVAL_SECONDS = 10.0


@attrs.define
class LogThrottle:
    interval: float = LOG_INTERVAL_SECONDS
    _next_allowed: float = attrs.field(default=float("-inf"), init=False)
    _suppressed: int = attrs.field(default=0, init=False)

    def allow(self, now: float) -> int | None:
        """None when this line is to be held back; else how many lines were held back before it."""
        if now < self._next_allowed:
            self._suppressed += 1
            return None
        self._next_allowed = now + self.interval
        suppressed, self._suppressed = self._suppressed, 0
        return suppressed
