"""Gap repair over REST: Binance's rate limits honoured (429 + Retry-After, 418 bans), failures reported as
explicit gaps, retained-history limits, and the REST client's own rules."""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import pytest
import trio
import trio.testing
from test_ingest_support import Ingest, make_ticks, running_ingest, trades

from app.ingest.rest import (
    REQUEST_TIMEOUT_SECONDS,
    BinanceRest,
    RestError,
    RestUnavailable,
    retry_after_seconds,
    seconds_to_next_minute,
)
from app.ingest.status import IngestStatus
from app.replay.config import Limits, ManualSource, SimulatorConfig
from app.replay.faults import RestFault
from app.replay.simulator import Simulator, open_simulator


async def test_a_429_storm_is_waited_out_and_every_gap_repaired() -> None:
    # 120 weight per minute: 4 historicalTrades requests; three symbols need 15 pages after a restart.
    symbols = ("BTCUSDT", "ETHUSDT", "SOLUSDT")
    history = [tick for symbol in symbols for tick in make_ticks(symbol, 1, 5000)]
    config = SimulatorConfig(
        source=ManualSource(symbols=symbols, initial=tuple(history)),
        limits=Limits(rest_weight_per_minute=120),
    )
    # Trio's clock jumps only while everything idles (a Retry-After wait), so minutes pass in moments.
    clock = trio.testing.MockClock(autojump_threshold=0.05)
    await _with_clock(clock, partial(_storm, config, symbols))


async def _storm(config: SimulatorConfig, symbols: tuple[str, ...]) -> None:
    with trio.fail_after(900):
        async with open_simulator(config) as simulator, running_ingest(
            simulator, symbols, resume_from=dict.fromkeys(symbols, 0), stale_after_seconds=3600
        ) as ingest:
            await simulator.wait_subscribed("btcusdt@trade")
            simulator.publish([make_ticks(symbol, 5001, 1)[0] for symbol in symbols])
            for symbol in symbols:
                await ingest.wait_last_id(symbol, 5001)
            for symbol in symbols:
                assert trades(ingest.of(symbol)) == trades(simulator.published(symbol))
                assert ingest.status.symbols[symbol].unrepaired_gaps == []
            assert simulator.stats.rest_rejected >= 3
            assert ingest.status.rest_rate_limited == simulator.stats.rest_rejected


async def _with_clock(clock: trio.testing.MockClock, test: partial[object]) -> None:
    """Runs ``test`` in a fresh Trio run with ``clock`` (pytest-trio's own run has the real clock)."""
    await trio.to_thread.run_sync(partial(trio.run, test, clock=clock))


@asynccontextmanager
async def rest_server(status_line: str, headers: dict[str, str], body: bytes) -> AsyncIterator[str]:
    """A loopback HTTP server answering every request with one canned response (for answers the simulator
    never gives, such as a 418 ban). Yields its base URL."""

    async def handle(stream: trio.SocketStream) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some(65536)
            if not chunk:
                return
            data += chunk
        head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        response = f"HTTP/1.1 {status_line}\r\n{head}Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        await stream.send_all(response.encode() + body)
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        yield f"http://127.0.0.1:{port}"
        nursery.cancel_scope.cancel()


async def test_a_418_ban_is_not_retried_and_the_gap_is_reported(simulator: Simulator) -> None:
    banned = rest_server("418 I'm a teapot", {"Retry-After": "7200", "Content-Type": "application/json"},
                         b'{"code":-1003,"msg":"Way too much request weight used; IP banned until 1723170000000."}')
    with trio.fail_after(10):
        async with banned as rest_url, running_ingest(simulator, ["BTCUSDT"], binance_rest_url=rest_url) as ingest:
            await simulator.wait_subscribed("btcusdt@trade")
            simulator.publish(make_ticks("BTCUSDT", 1, 5))
            await ingest.wait_received(5)
            simulator.reset_connections()
            simulator.publish(make_ticks("BTCUSDT", 6, 20))
            await simulator.wait_until(lambda: simulator.stats.connections_accepted == 2)
            await simulator.wait_subscribed("btcusdt@trade")
            simulator.publish(make_ticks("BTCUSDT", 26, 3))
            await ingest.wait_last_id("BTCUSDT", 28)
            # Nothing silent: the lost range is a gap event, and the stream went on after it in order.
            status = ingest.status.symbols["BTCUSDT"]
            [gap] = status.unrepaired_gaps
            assert (gap.first_trade_id, gap.last_trade_id) == (6, 25)
            assert "418" in gap.reason and "banned" in gap.reason
            assert [tick.trade_id for tick in ingest.received] == [1, 2, 3, 4, 5, 26, 27, 28]
            assert status.trades_lost == 20
            assert ingest.status.rest_requests == 1  # one answer 418 (exchangeInfo at start-up): never again


async def test_trades_no_longer_retained_by_rest_are_reported_as_a_gap() -> None:
    history = make_ticks("BTCUSDT", 1, 3000)
    config = SimulatorConfig(source=ManualSource(symbols=("BTCUSDT",), initial=tuple(history)), retained_trades=1000)
    with trio.fail_after(10):
        async with open_simulator(config) as simulator, running_ingest(
            simulator, ["BTCUSDT"], resume_from={"BTCUSDT": 100}
        ) as ingest:
            await simulator.wait_subscribed("btcusdt@trade")
            simulator.publish(make_ticks("BTCUSDT", 3001, 1))
            await ingest.wait_last_id("BTCUSDT", 3001)
            [gap] = ingest.status.symbols["BTCUSDT"].unrepaired_gaps
            # The simulator keeps ids 2002..3001: the first page starts there, so 101..2001 are lost.
            assert (gap.first_trade_id, gap.last_trade_id) == (101, 2001)
            assert trades(ingest.received) == trades(simulator.published("BTCUSDT"))


async def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_an_unreachable_rest_api_is_retried_then_given_up(autojump_clock: trio.testing.MockClock) -> None:
    status = IngestStatus()
    rest = BinanceRest(f"http://127.0.0.1:{await _closed_port()}", status)
    start = trio.current_time()
    with pytest.raises(RestUnavailable, match="historicalTrades failed"):
        await rest.historical_trades("BTCUSDT", 1)
    await rest.aclose()
    assert status.rest_requests == 5 and status.rest_errors == 5
    assert trio.current_time() - start == pytest.approx(1 + 2 + 4 + 8)


async def test_a_refused_request_is_not_retried(simulator: Simulator) -> None:
    status = IngestStatus()
    rest = BinanceRest(simulator.rest_url, status)
    with trio.fail_after(10), pytest.raises(RestError, match="Invalid symbol") as raised:
        await rest.historical_trades("NOPEUSDT", 1)
    await rest.aclose()
    assert raised.value.code == -1121 and raised.value.status == 400
    assert not isinstance(raised.value, RestUnavailable)
    assert status.rest_requests == 1


async def test_the_weight_limit_is_read_from_exchange_info_and_used_weight_from_headers(simulator: Simulator) -> None:
    rest = BinanceRest(simulator.rest_url, IngestStatus())
    with trio.fail_after(10):
        info = await rest.exchange_info()
    assert {entry["symbol"] for entry in info["symbols"]} == {"BTCUSDT", "ETHUSDT"}
    assert rest.weight_limit == 6000
    assert rest.used_weight >= 20
    await rest.aclose()


def test_retry_after_is_read_in_seconds_with_a_safe_default() -> None:
    assert retry_after_seconds({"retry-after": "17"}) == 17.0
    assert retry_after_seconds({}) == 30.0
    assert retry_after_seconds({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 30.0
    assert retry_after_seconds({"retry-after": "-5"}) == 30.0
    assert seconds_to_next_minute(120.0) == 60.0
    assert seconds_to_next_minute(179.5) == 0.5


# --- REST trouble: retried with the one backoff, then reported as a gap; the live stream flows meanwhile ---

TRANSIENT_FAULTS = [RestFault.SERVER_ERROR, RestFault.TIMEOUT, RestFault.TRUNCATED_JSON, RestFault.INVALID_JSON]


@pytest.mark.parametrize("fault", TRANSIENT_FAULTS)
async def test_a_transient_rest_failure_is_retried_after_1_then_2_seconds(
    fault: RestFault, autojump_clock: trio.testing.MockClock, simulator: Simulator
) -> None:
    simulator.publish(make_ticks("BTCUSDT", 1, 5))
    simulator.fail_rest("historicalTrades", fault, times=2)
    status = IngestStatus()
    rest = BinanceRest(simulator.rest_url, status)
    start = trio.current_time()
    with trio.fail_after(60):
        page = await rest.historical_trades("BTCUSDT", 2, 3)
    await rest.aclose()
    assert [tick.trade_id for tick in page] == [2, 3, 4]
    assert status.rest_requests == 3 and status.rest_errors == 2
    waited_for_answers = 2 * REQUEST_TIMEOUT_SECONDS if fault is RestFault.TIMEOUT else 0
    assert trio.current_time() - start == pytest.approx(1 + 2 + waited_for_answers, abs=0.01)


async def test_a_rest_api_answering_503_is_given_up_after_four_retries(
    autojump_clock: trio.testing.MockClock, simulator: Simulator
) -> None:
    simulator.fail_rest("historicalTrades", RestFault.SERVER_ERROR, times=10)
    status = IngestStatus()
    rest = BinanceRest(simulator.rest_url, status)
    start = trio.current_time()
    with pytest.raises(RestUnavailable, match=r"HTTP 503: .*-1001.* \(after 4 retries\)") as raised:
        with trio.fail_after(60):
            await rest.historical_trades("BTCUSDT", 1)
    await rest.aclose()
    assert raised.value.status == 503
    assert status.rest_requests == 5 and status.rest_errors == 5
    assert trio.current_time() - start == pytest.approx(1 + 2 + 4 + 8, abs=0.01)


async def test_a_backfill_that_rest_keeps_failing_is_a_gap_while_other_symbols_flow(
    autojump_clock: trio.testing.MockClock, simulator: Simulator
) -> None:
    simulator.publish(make_ticks("BTCUSDT", 1, 50))  # traded while we were away: REST has them
    simulator.fail_rest("historicalTrades", RestFault.SERVER_ERROR, times=5)
    with trio.fail_after(120):
        async with running_ingest(
            simulator, ["BTCUSDT", "ETHUSDT"], resume_from={"BTCUSDT": 10}, stale_after_seconds=3600
        ) as ingest:
            await simulator.wait_subscribed("ethusdt@trade")
            # The 24hr ticker shows BTCUSDT behind: its repair starts, and meets the first 503.
            await simulator.wait_until(lambda: simulator.stats.rest_faults >= 1)
            btc = ingest.status.symbols["BTCUSDT"]
            simulator.publish(make_ticks("ETHUSDT", 1, 3))
            await ingest.wait_last_id("ETHUSDT", 3)
            assert btc.backfilling and simulator.stats.rest_faults < 5  # ETHUSDT flowed during the retries
            simulator.publish(make_ticks("BTCUSDT", 51, 2))
            await ingest.wait_last_id("BTCUSDT", 52)
            [gap] = btc.unrepaired_gaps
            assert (gap.first_trade_id, gap.last_trade_id) == (11, 50)
            assert "HTTP 503" in gap.reason and "after 4 retries" in gap.reason
            assert [tick.trade_id for tick in ingest.of("BTCUSDT")] == [51, 52]
            assert simulator.stats.rest_faults == 5 and not btc.backfilling


@asynccontextmanager
async def resumed_behind_40_trades(simulator: Simulator) -> AsyncIterator[Ingest]:
    """Ingest resuming BTCUSDT from id 10 while the exchange traded up to 50 (REST has them), once the live
    trade 51 has come out (so the repair of 11..50 ended, one way or the other)."""
    simulator.publish(make_ticks("BTCUSDT", 1, 50))
    async with running_ingest(simulator, ["BTCUSDT"], resume_from={"BTCUSDT": 10}, stale_after_seconds=3600) as ingest:
        await simulator.wait_subscribed("btcusdt@trade")
        simulator.publish(make_ticks("BTCUSDT", 51, 1))
        await ingest.wait_last_id("BTCUSDT", 51)
        yield ingest


@pytest.mark.parametrize("fault", [*TRANSIENT_FAULTS, RestFault.EMPTY_LIST])
async def test_a_backfill_that_rest_fails_twice_is_repaired_in_full(
    fault: RestFault, autojump_clock: trio.testing.MockClock, simulator: Simulator
) -> None:
    simulator.fail_rest("historicalTrades", fault, times=2)
    with trio.fail_after(120):
        async with resumed_behind_40_trades(simulator) as ingest:
            assert trades(ingest.received) == trades(simulator.published("BTCUSDT")[10:])
            status = ingest.status.symbols["BTCUSDT"]
            assert status.unrepaired_gaps == [] and status.gaps_repaired == 1
            assert simulator.stats.rest_faults == 2


async def test_an_empty_page_where_trades_exist_is_asked_again_then_a_gap(
    autojump_clock: trio.testing.MockClock, simulator: Simulator
) -> None:
    # Answered [] four times: the first ask and three more (EMPTY_PAGE_RETRY), then given up.
    simulator.fail_rest("historicalTrades", RestFault.EMPTY_LIST, times=4)
    with trio.fail_after(120):
        async with resumed_behind_40_trades(simulator) as ingest:
            [gap] = ingest.status.symbols["BTCUSDT"].unrepaired_gaps
            assert (gap.first_trade_id, gap.last_trade_id) == (11, 50)
            assert "no trades from id 11" in gap.reason
            assert [tick.trade_id for tick in ingest.received] == [51]


async def test_the_exchanges_clock_is_read_from_its_time_endpoint(simulator: Simulator) -> None:
    # Used to anchor a fresh symbol when no live trade has shown the exchange's clock yet.
    rest = BinanceRest(simulator.rest_url, IngestStatus())
    with trio.fail_after(10):
        before = time.time_ns() // 1_000_000
        server_ms = await rest.server_time_ms()
        after = time.time_ns() // 1_000_000
    await rest.aclose()
    assert before <= server_ms <= after  # the simulator's clock is this machine's
