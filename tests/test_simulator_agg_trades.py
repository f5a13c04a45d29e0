"""The simulator's ``GET /api/v3/aggTrades``: Binance's aggregation, parameters, limits and errors.

HTTP tests with a real client on loopback; the aggregation itself against a ten-line reference with Hypothesis.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import httpx
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from app.model import Tick
from app.replay.ledger import SymbolTrades
from app.replay.simulator import Simulator

BASE_MS = 1723161240000  # 2024-08-08 23:54:00 UTC
HOUR_MS = 3_600_000


def make_tick(trade_id: int, time_ms: int, price: str = "100.00", quantity: str = "1.5",
              maker: bool = False) -> Tick:
    return Tick(symbol="BTCUSDT", price=Decimal(price), quantity=Decimal(quantity), trade_time_ms=time_ms,
                event_time_ms=time_ms, trade_id=trade_id, is_buyer_maker=maker)


async def agg_trades(simulator: Simulator, **params: object) -> httpx.Response:
    async with httpx.AsyncClient(base_url=simulator.rest_url) as client:
        query = {"symbol": "BTCUSDT", **{key: str(value) for key, value in params.items()}}
        return await client.get("/api/v3/aggTrades", params=query)


def reference(ticks: list[Tick]) -> list[tuple[int, Decimal, Decimal, int, int, int, bool]]:
    """Consecutive trades with the same price, side and time (and following ids) are one aggregate."""
    out: list[tuple[int, Decimal, Decimal, int, int, int, bool]] = []
    for tick in ticks:
        if out:
            agg_id, price, quantity, first, last, time_ms, maker = out[-1]
            same_order = (tick.trade_id, tick.price, tick.trade_time_ms, tick.is_buyer_maker) == (last + 1, price,
                                                                                               time_ms, maker)
            if same_order:
                out[-1] = (agg_id, price, quantity + tick.quantity, first, tick.trade_id, time_ms, maker)
                continue
        out.append((len(out), tick.price, tick.quantity, tick.trade_id, tick.trade_id, tick.trade_time_ms,
                    tick.is_buyer_maker))
    return out


# A trade after the previous one: its id follows on or skips; its time, price and side stay or change.
steps = st.lists(
    st.tuples(st.sampled_from([1, 1, 1, 2]), st.sampled_from([0, 0, 1]), st.sampled_from(["100.00", "100.01"]),
              st.booleans(), st.sampled_from(["0.1", "1.5", "0.00000001"])),
    max_size=60,
)


def build(drawn: list[tuple[int, int, str, bool, str]]) -> list[Tick]:
    ticks: list[Tick] = []
    trade_id, time_ms = 1000, BASE_MS
    for id_step, time_step, price, maker, quantity in drawn:
        trade_id, time_ms = trade_id + id_step, time_ms + time_step
        ticks.append(make_tick(trade_id, time_ms, price, quantity, maker))
    return ticks


def as_tuples(trades: SymbolTrades, limit: int = 10_000) -> list[tuple[int, Decimal, Decimal, int, int, int, bool]]:
    return [(a.agg_id, a.price, a.quantity, a.first_trade_id, a.last_trade_id, a.time_ms, a.is_buyer_maker)
            for a in trades.agg_from_id(0, limit)]


@given(steps)
def test_aggregation_equals_the_reference(drawn: list[tuple[int, int, str, bool, str]]) -> None:
    ticks = build(drawn)
    trades = SymbolTrades(cap=1000)
    for tick in ticks:
        trades.append(tick)
    assert as_tuples(trades) == reference(ticks)


@given(steps, st.integers(1, 20), st.integers(1, 10))
def test_every_query_returns_whole_aggregates_of_the_reference(
    drawn: list[tuple[int, int, str, bool, str]], cap: int, limit: int
) -> None:
    """With eviction: only aggregates whose trades are all retained are served, with the same ids."""
    ticks = build(drawn)
    trades = SymbolTrades(cap=cap)
    for tick in ticks:
        trades.append(tick)
    retained = {tick.trade_id for tick in ticks[-cap:]}
    whole = [agg for agg in reference(ticks) if agg[3] in retained]
    assert as_tuples(trades) == whole
    assert as_tuples(trades, limit) == whole[:limit]
    recent = [(a.agg_id, a.first_trade_id) for a in trades.agg_recent(limit)]
    assert recent == [(agg[0], agg[3]) for agg in whole[-limit:]]
    if ticks:
        start_ms = ticks[len(ticks) // 2].trade_time_ms
        window = [(a.agg_id, a.first_trade_id) for a in trades.agg_between(start_ms, start_ms + 1, limit)]
        assert window == [(agg[0], agg[3]) for agg in whole if start_ms <= agg[5] <= start_ms + 1][:limit]


async def test_one_taker_order_is_one_aggregate_in_binances_shape(simulator: Simulator) -> None:
    simulator.publish([
        make_tick(10, BASE_MS, "100.00", "1.5"),
        make_tick(11, BASE_MS, "100.00", "0.25"),  # same order: price, side and time
        make_tick(12, BASE_MS, "100.01", "1"),  # another price
        make_tick(13, BASE_MS, "100.01", "2", maker=True),  # another side
        make_tick(14, BASE_MS + 1, "100.01", "3", maker=True),  # another time
    ])
    with trio.fail_after(5):
        response = await agg_trades(simulator)
    assert response.status_code == 200
    assert response.headers["X-MBX-USED-WEIGHT-1M"] == "4"
    assert response.json() == [
        {"a": 0, "p": "100.00000000", "q": "1.75000000", "f": 10, "l": 11, "T": BASE_MS, "m": False, "M": True},
        {"a": 1, "p": "100.01000000", "q": "1.00000000", "f": 12, "l": 12, "T": BASE_MS, "m": False, "M": True},
        {"a": 2, "p": "100.01000000", "q": "2.00000000", "f": 13, "l": 13, "T": BASE_MS, "m": True, "M": True},
        {"a": 3, "p": "100.01000000", "q": "3.00000000", "f": 14, "l": 14, "T": BASE_MS + 1, "m": True,
         "M": True},
    ]


def ids(response: httpx.Response) -> list[int]:
    assert response.status_code == 200, response.text
    rows: list[dict[str, Any]] = response.json()
    return [row["a"] for row in rows]


async def test_from_id_time_windows_and_limits(simulator: Simulator) -> None:
    # 1,200 single-trade aggregates, one a second.
    simulator.publish([make_tick(trade_id, BASE_MS + trade_id * 1000) for trade_id in range(1200)])
    with trio.fail_after(10):
        assert ids(await agg_trades(simulator, fromId=5, limit=3)) == [5, 6, 7]
        assert ids(await agg_trades(simulator)) == list(range(700, 1200))  # the newest 500
        assert ids(await agg_trades(simulator, fromId=0, limit=5000)) == list(range(1000))  # at most 1000
        assert ids(await agg_trades(simulator, fromId=5000)) == []
        # startTime and endTime are inclusive.
        assert ids(await agg_trades(simulator, startTime=BASE_MS + 10_000, endTime=BASE_MS + 12_000)) == [10, 11, 12]
        # startTime alone: the first aggregates from it, within an hour.
        assert ids(await agg_trades(simulator, startTime=BASE_MS + 100_000, limit=2)) == [100, 101]
        # endTime alone: the hour up to it.
        assert ids(await agg_trades(simulator, endTime=BASE_MS + 2_000, limit=10)) == [0, 1, 2]
        assert ids(await agg_trades(simulator, startTime=BASE_MS, endTime=BASE_MS + HOUR_MS, limit=2)) == [0, 1]


@pytest.mark.parametrize(
    ("params", "code", "message"),
    [
        ({"startTime": BASE_MS, "endTime": BASE_MS + HOUR_MS + 1}, -1127,
         "More than 1 hours between startTime and endTime."),
        ({"fromId": 1, "startTime": BASE_MS}, -1128, "Combination of optional parameters invalid."),
        ({"startTime": BASE_MS + 1, "endTime": BASE_MS}, -1023, "Start time is greater than end time."),
        ({"fromId": "-1"}, -1100, "Illegal characters found in parameter 'fromId'; legal range is '^[0-9]{1,20}$'."),
        ({"limit": "0"}, -1100, "Illegal characters found in parameter 'limit'; legal range is '1-1000'."),
        ({"symbol": "DOGEBTC"}, -1121, "Invalid symbol."),
        ({"symbol": ""}, -1102, "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed."),
    ],
)
async def test_bad_parameters_get_binances_json_errors(simulator: Simulator, params: dict[str, object], code: int,
                                                      message: str) -> None:
    with trio.fail_after(5):
        response = await agg_trades(simulator, **params)
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"code": code, "msg": message}


@pytest.mark.parametrize(("method", "path", "status"),
                         [("GET", "/api/v3/nothingHere", 404), ("GET", "/", 404), ("POST", "/api/v3/aggTrades", 405)])
async def test_unknown_paths_and_methods_answer_in_binances_json_shape(simulator: Simulator, method: str, path: str,
                                                                       status: int) -> None:
    with trio.fail_after(5):
        async with httpx.AsyncClient(base_url=simulator.rest_url) as client:
            response = await client.request(method, path)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"code": -1020, "msg": f"This operation is not supported: {method} {path}"}
