"""The one backoff (app/backoff.py): ceilings, full jitter, no jitter, retry limits (pure; Hypothesis)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.backoff import Backoff, BackoffPolicy
from app.ingest.reconnect import RECONNECT_BACKOFF
from app.ingest.rest import TRANSIENT_RETRY

policies = st.builds(
    BackoffPolicy,
    start=st.floats(min_value=0.001, max_value=100.0),
    cap=st.floats(min_value=0.001, max_value=10_000.0),
    jitter=st.booleans(),
    max_retries=st.none() | st.integers(min_value=0, max_value=20),
)


def test_reconnect_ceiling_doubles_from_half_a_second_to_the_cap() -> None:
    backoff = Backoff(RECONNECT_BACKOFF, rng=random.Random(1))
    ceilings = []
    for _ in range(10):
        ceilings.append(backoff.ceiling())
        backoff.next_delay()
    assert ceilings == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0, 30.0]


def test_full_jitter_delays_spread_over_the_whole_range() -> None:
    backoff = Backoff(RECONNECT_BACKOFF, rng=random.Random(7))
    delays = []
    for _ in range(200):
        ceiling = backoff.ceiling()
        delay = backoff.next_delay()
        assert 0.0 <= delay <= ceiling
        delays.append(delay)
    # Full jitter: capped delays spread over the whole range, not bunched at the cap.
    capped = delays[10:]
    assert min(capped) < 5.0 and max(capped) > 25.0


def test_reset_starts_from_the_bottom_again() -> None:
    backoff = Backoff(RECONNECT_BACKOFF, rng=random.Random(3))
    for _ in range(5):
        backoff.next_delay()
    assert backoff.ceiling() == 16.0
    backoff.reset()
    assert backoff.ceiling() == 0.5


def test_rest_retries_wait_1_2_4_8_seconds_then_give_up() -> None:
    backoff = Backoff(TRANSIENT_RETRY)
    delays = []
    while True:
        delay = backoff.next_delay()
        if backoff.exhausted:
            break
        delays.append(delay)
    assert delays == [1.0, 2.0, 4.0, 8.0]
    assert backoff.failures == 5


@given(policies, st.integers(min_value=0, max_value=2000), st.randoms(use_true_random=False))
def test_every_delay_lies_between_zero_and_its_ceiling(
    policy: BackoffPolicy, failures: int, rng: random.Random
) -> None:
    ceiling = policy.ceiling(failures)
    delay = policy.delay(failures, rng)
    # The reference: double from ``start`` once per failure, never beyond ``cap`` (doubling is exact in floats).
    reference = min(policy.cap, policy.start)
    for _ in range(failures):
        reference = min(policy.cap, reference * 2.0)
    assert ceiling == reference
    assert 0.0 <= delay <= ceiling <= policy.cap
    if not policy.jitter:
        assert delay == ceiling


@given(policies, st.integers(min_value=0, max_value=200))
def test_ceilings_never_shrink_as_failures_grow(policy: BackoffPolicy, failures: int) -> None:
    assert policy.ceiling(failures) <= policy.ceiling(failures + 1)


@given(policies)
def test_a_limited_policy_allows_exactly_max_retries(policy: BackoffPolicy) -> None:
    backoff = Backoff(policy, rng=random.Random(0))
    retries = 0
    while retries <= 25:
        backoff.next_delay()
        if backoff.exhausted:
            break
        retries += 1
    assert retries == (policy.max_retries if policy.max_retries is not None else 26)


@pytest.mark.parametrize(("start", "cap"), [(0.0, 1.0), (1.0, 0.0), (-1.0, 5.0), (float("nan"), 1.0)])
def test_a_policy_needs_positive_times(start: float, cap: float) -> None:
    with pytest.raises(ValueError, match="must be > 0"):
        BackoffPolicy(start=start, cap=cap)
