"""The simulator's ``GET /api/v3/ticker/24hr``: Binance's shapes, weights and errors, over real HTTP on loopback."""

from __future__ import annotations

from decimal import Decimal

import httpx
import orjson
import trio
import trio.testing

from app.model import Tick
from app.replay.config import Limits, ManualSource, SimulatorConfig
from app.replay.simulator import Simulator, open_simulator

BASE_MS = 1723161240000
DAY_MS = 86_400_000


def make_tick(symbol: str, trade_id: int, time_ms: int, price: str, quantity: str = "1") -> Tick:
    return Tick(symbol=symbol, price=Decimal(price), quantity=Decimal(quantity), trade_time_ms=time_ms,
                event_time_ms=time_ms, trade_id=trade_id, is_buyer_maker=False)


async def get(simulator: Simulator, **params: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=simulator.rest_url) as client:
        return await client.get("/api/v3/ticker/24hr", params=params)


def symbols_param(symbols: list[str]) -> str:
    return orjson.dumps(symbols).decode()


async def test_full_ticker_of_one_symbol_covers_the_last_24_hours(simulator: Simulator) -> None:
    simulator.publish([
        make_tick("BTCUSDT", 1, BASE_MS - DAY_MS, "90"),  # exactly 24 h before the newest trade: outside
        make_tick("BTCUSDT", 2, BASE_MS - 1000, "100", "2"),
        make_tick("BTCUSDT", 3, BASE_MS - 500, "120", "1"),
        make_tick("BTCUSDT", 4, BASE_MS, "110", "1"),
    ])
    with trio.fail_after(5):
        response = await get(simulator, symbol="BTCUSDT")
    assert response.status_code == 200
    assert response.headers["X-MBX-USED-WEIGHT-1M"] == "2"
    assert response.json() == {
        "symbol": "BTCUSDT",
        "priceChange": "10.00000000",
        "priceChangePercent": "10.000",
        "weightedAvgPrice": "107.50000000",  # (200 + 120 + 110) / 4
        "prevClosePrice": "90.00000000",
        "lastPrice": "110.00000000",
        "lastQty": "1.00000000",
        "bidPrice": "110.00000000",
        "bidQty": "0.00000000",
        "askPrice": "110.00000000",
        "askQty": "0.00000000",
        "openPrice": "100.00000000",
        "highPrice": "120.00000000",
        "lowPrice": "100.00000000",
        "volume": "4.00000000",
        "quoteVolume": "430.00000000",
        "openTime": BASE_MS - DAY_MS,
        "closeTime": BASE_MS,
        "firstId": 2,
        "lastId": 4,
        "count": 3,
    }


async def test_mini_ticker_for_several_symbols_and_one_without_trades(simulator: Simulator) -> None:
    simulator.publish([make_tick("BTCUSDT", 7, BASE_MS, "100", "0.5")])
    with trio.fail_after(5):
        response = await get(simulator, symbols=symbols_param(["ETHUSDT", "BTCUSDT"]), type="MINI")
    assert response.status_code == 200
    assert response.json() == [
        {"symbol": "ETHUSDT", "openPrice": "0.00000000", "highPrice": "0.00000000", "lowPrice": "0.00000000",
         "lastPrice": "0.00000000", "volume": "0.00000000", "quoteVolume": "0.00000000",
         "openTime": BASE_MS - DAY_MS, "closeTime": BASE_MS, "firstId": -1, "lastId": -1, "count": 0},
        {"symbol": "BTCUSDT", "openPrice": "100.00000000", "highPrice": "100.00000000",
         "lowPrice": "100.00000000", "lastPrice": "100.00000000", "volume": "0.50000000",
         "quoteVolume": "50.00000000", "openTime": BASE_MS - DAY_MS, "closeTime": BASE_MS,
         "firstId": 7, "lastId": 7, "count": 1},
    ]


async def test_without_symbol_every_listed_symbol_is_reported(simulator: Simulator) -> None:
    simulator.publish([make_tick("ETHUSDT", 3, BASE_MS, "10")])
    with trio.fail_after(5):
        response = await get(simulator, type="MINI")
    assert response.status_code == 200
    assert {row["symbol"]: row["lastId"] for row in response.json()} == {"BTCUSDT": -1, "ETHUSDT": 3}
    assert response.headers["X-MBX-USED-WEIGHT-1M"] == "80"


async def test_weight_follows_the_number_of_symbols_asked_for() -> None:
    names = [f"S{index:03d}USDT" for index in range(120)]
    with trio.fail_after(10):
        async with open_simulator(SimulatorConfig(source=ManualSource(symbols=tuple(names)))) as simulator:
            charged = []
            for count in (1, 20, 21, 100, 101, 120):
                before = simulator.stats.rest_weight_used
                response = await get(simulator, symbols=symbols_param(names[:count]), type="MINI")
                assert response.status_code == 200
                assert len(response.json()) == count
                charged.append(simulator.stats.rest_weight_used - before)
    assert charged == [2, 2, 40, 40, 80, 80]


async def test_bad_requests_get_binance_errors(simulator: Simulator) -> None:
    cases = [
        ({"symbol": "NOPEUSDT"}, -1121),
        ({"symbols": symbols_param(["BTCUSDT", "NOPEUSDT"])}, -1121),
        ({"symbol": "BTCUSDT", "symbols": symbols_param(["ETHUSDT"])}, -1128),
        ({"symbols": "BTCUSDT"}, -1100),
        ({"symbols": "[1, 2]"}, -1100),
        ({"symbols": "[]"}, -1102),
        ({"symbols": symbols_param(["BTCUSDT", "BTCUSDT"])}, -1101),
        ({"symbol": ""}, -1102),
        ({"symbol": "BTCUSDT", "type": "HUGE"}, -1100),
    ]
    with trio.fail_after(5):
        for params, code in cases:
            response = await get(simulator, **params)
            assert response.status_code == 400, params
            assert response.json()["code"] == code, params
            assert isinstance(response.json()["msg"], str)


async def test_requests_beyond_the_weight_budget_get_429(autojump_clock: trio.testing.MockClock) -> None:
    # The budget resets each minute of Trio's clock: on the mock clock both requests fall in the same minute.
    config = SimulatorConfig(source=ManualSource(symbols=("BTCUSDT", "ETHUSDT")),
                             limits=Limits(rest_weight_per_minute=100))
    with trio.fail_after(5):
        async with open_simulator(config) as simulator:
            first = await get(simulator, type="MINI")  # 80
            second = await get(simulator, type="MINI")  # 160 > 100
    assert first.status_code == 200
    assert second.status_code == 429
    assert second.json()["code"] == -1003
    assert int(second.headers["Retry-After"]) >= 1
    assert simulator.stats.rest_weight_used == 80
    assert simulator.stats.rest_rejected == 1

