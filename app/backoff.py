"""How long to wait before trying again: one exponential backoff for every retry loop in the service.

Each use configures its own ``BackoffPolicy`` (reconnecting to the exchange, retrying a REST request, retrying
a storage write) and keeps a ``Backoff`` (the policy plus its failure count) for as long as one run of
failures lasts. Pure: no clock, no Trio; the caller sleeps for what ``next_delay`` returns (on Trio's clock,
so tests run under ``MockClock``). It sits below ``app.ingest`` and ``app.store`` so that both can use it.
"""

from __future__ import annotations

import random

import attrs


def _positive(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.name} must be > 0, not {value!r}")


@attrs.frozen(slots=True)
class BackoffPolicy:
    """The n-th retry (after n failures, counting from 0) waits up to ``min(cap, start * 2**n)`` seconds:
    exactly that without jitter, or uniformly anywhere from 0 to it with full jitter (the AWS architecture
    blog's "full jitter", which spreads many clients that failed together). ``max_retries`` None: retry forever.
    """

    start: float = attrs.field(validator=_positive)
    cap: float = attrs.field(validator=_positive)
    jitter: bool = True
    max_retries: int | None = None

    def ceiling(self, failures: int) -> float:
        """The longest wait after ``failures`` failures in a row."""
        # Bounded exponent: 2.0 ** 1100 overflows, and the cap is reached long before.
        return min(self.cap, self.start * 2.0 ** min(failures, 64))

    def delay(self, failures: int, rng: random.Random) -> float:
        """The wait after ``failures`` failures in a row (drawn from ``rng`` with jitter)."""
        ceiling = self.ceiling(failures)
        return rng.uniform(0.0, ceiling) if self.jitter else ceiling

    def exhausted(self, failures: int) -> bool:
        """True when ``failures`` failures in a row are more than this policy retries."""
        return self.max_retries is not None and failures > self.max_retries


@attrs.define
class Backoff:
    """One run of failures under ``policy``: ``next_delay`` counts a failure, ``reset`` ends the run."""

    policy: BackoffPolicy
    rng: random.Random = attrs.field(factory=random.Random)
    failures: int = 0

    def ceiling(self) -> float:
        """The upper bound of the next delay."""
        return self.policy.ceiling(self.failures)

    def next_delay(self) -> float:
        """The delay before the next attempt; each call counts one more failure."""
        delay = self.policy.delay(self.failures, self.rng)
        self.failures += 1
        return delay

    @property
    def exhausted(self) -> bool:
        """The failures so far are more than the policy retries: give up."""
        return self.policy.exhausted(self.failures)

    def reset(self) -> None:
        """After a success (or a healthy connection): start from the bottom again."""
        self.failures = 0
