"""Reconnect health, the connection-attempt budget, and control-message pacing (pure cores + MockClock)."""

from __future__ import annotations

import trio
import trio.testing

from app.ingest.binance_stream import ConnectionHandle
from app.ingest.log_throttle import LogThrottle
from app.ingest.pacer import Pacer, SlidingWindow
from app.ingest.reconnect import AttemptBudget


async def test_a_connection_counts_as_healthy_after_a_minute_up(
    autojump_clock: trio.testing.MockClock,
) -> None:
    brief = ConnectionHandle()
    brief.set_up()
    await trio.sleep(5)
    brief.set_ended()
    assert not brief.was_healthy(healthy_after=60.0)
    long_lived = ConnectionHandle()
    long_lived.set_up()
    await trio.sleep(60)
    assert long_lived.was_healthy(healthy_after=60.0)
    never_up = ConnectionHandle()
    never_up.set_ended()
    assert not never_up.was_healthy(healthy_after=0.0)


def test_attempt_budget_allows_the_limit_per_sliding_window() -> None:
    budget = AttemptBudget(limit=3, window=300.0)
    for now in (0.0, 1.0, 2.0):
        assert budget.delay(now) == 0.0
        budget.record(now)
    assert budget.delay(10.0) == 290.0
    assert budget.delay(300.0) == 0.0  # the attempt at 0.0 left the window


def test_attempt_budget_defaults_stay_under_binances_300_per_5_minutes() -> None:
    budget = AttemptBudget()
    allowed = 0
    now = 0.0
    while now < 300.0:
        if budget.delay(now) == 0.0:
            budget.record(now)
            allowed += 1
        now += 0.1
    assert allowed <= 300


def test_sliding_window_never_exceeds_its_limit_in_any_second() -> None:
    window = SlidingWindow(limit=3, window=1.0)
    now = 0.0
    sent: list[float] = []
    while len(sent) < 30:
        delay = window.delay(now)
        now += delay
        if delay == 0.0:
            window.record(now)
            sent.append(now)
    for index, start in enumerate(sent):
        assert sum(1 for moment in sent[index:] if moment < start + 1.0) <= 3


async def test_pacer_spaces_a_burst_to_three_per_second_on_trio_clock(autojump_clock: trio.testing.MockClock) -> None:
    pacer = Pacer(SlidingWindow(limit=3, window=1.0))
    sent: list[tuple[float, str]] = []

    async def send(message: str) -> None:
        sent.append((trio.current_time(), message))

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        for number in range(10):
            nursery.start_soon(pacer.send, send, f"m{number}")
            await trio.testing.wait_all_tasks_blocked()
    times = [moment - start for moment, _ in sent]
    # First come, first served; three per sliding second, and with the server's pong at most four.
    assert [message for _, message in sent] == [f"m{number}" for number in range(10)]
    assert times == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 3.0]
    for index, moment in enumerate(times):
        assert sum(1 for other in times[index:] if other < moment + 1.0) + 1 <= 4


async def test_pacer_lets_a_lone_message_through_at_once(autojump_clock: trio.testing.MockClock) -> None:
    pacer = Pacer()
    sent: list[float] = []

    async def send(message: str) -> None:
        sent.append(trio.current_time())

    start = trio.current_time()
    await pacer.send(send, "a")
    await trio.sleep(5)
    await pacer.send(send, "b")
    assert [moment - start for moment in sent] == [0.0, 5.0]
    assert pacer.waited_seconds == 0.0


def test_log_throttle_reports_suppressed_lines() -> None:
    throttle = LogThrottle(interval=10.0)
    assert throttle.allow(0.0) == 0
    assert throttle.allow(1.0) is None
    assert throttle.allow(9.9) is None
    assert throttle.allow(10.0) == 2
    assert throttle.allow(10.5) is None
