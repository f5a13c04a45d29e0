"""The simulator's REST side: Binance's shapes, errors, weights and 429s, over real HTTP on loopback."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import httpx
import orjson
import pytest
import trio

from app.model import Tick
from app.recording import read_recording
from app.replay.config import Limits, ManualSource, SimulatorConfig
from app.replay.simulator import Simulator, open_simulator

DATA = Path(__file__).resolve().parents[1] / "app" / "data"
MINUTE = 60_000
BASE_MS = 1723161240000  # 2024-08-08 23:54:00 UTC, a minute boundary


def make_tick(trade_id: int, time_ms: int, price: str = "100.00", quantity: str = "1.5", maker: bool = False,
              symbol: str = "BTCUSDT") -> Tick:
    return Tick(symbol=symbol, price=Decimal(price), quantity=Decimal(quantity), trade_time_ms=time_ms,
                event_time_ms=time_ms, trade_id=trade_id, is_buyer_maker=maker)


async def get(simulator: Simulator, path: str, **params: object) -> httpx.Response:
    async with httpx.AsyncClient(base_url=simulator.rest_url) as client:
        return await client.get(path, params={key: str(value) for key, value in params.items()})


async def test_historical_trades_from_id_in_binance_shape(simulator: Simulator) -> None:
    simulator.publish([make_tick(trade_id, BASE_MS + trade_id) for trade_id in range(100, 110)])
    with trio.fail_after(5):
        response = await get(simulator, "/api/v3/historicalTrades", symbol="BTCUSDT", fromId=103, limit=2)
    assert response.status_code == 200
    assert response.json() == [
        {"id": 103, "price": "100.00000000", "qty": "1.50000000", "quoteQty": "150.00000000",
         "time": BASE_MS + 103, "isBuyerMaker": False, "isBestMatch": True},
        {"id": 104, "price": "100.00000000", "qty": "1.50000000", "quoteQty": "150.00000000",
         "time": BASE_MS + 104, "isBuyerMaker": False, "isBestMatch": True},
    ]
    assert response.headers["X-MBX-USED-WEIGHT-1M"] == "25"


async def test_historical_trades_without_from_id_are_the_most_recent(simulator: Simulator) -> None:
    simulator.publish([make_tick(trade_id, BASE_MS + trade_id) for trade_id in range(1, 1201)])
    with trio.fail_after(5):
        recent = await get(simulator, "/api/v3/historicalTrades", symbol="BTCUSDT", limit=3)
        default = await get(simulator, "/api/v3/historicalTrades", symbol="BTCUSDT")
        capped = await get(simulator, "/api/v3/historicalTrades", symbol="BTCUSDT", fromId=1, limit=5000)
        beyond = await get(simulator, "/api/v3/historicalTrades", symbol="BTCUSDT", fromId=5000)
    assert [row["id"] for row in recent.json()] == [1198, 1199, 1200]
    assert [row["id"] for row in default.json()] == list(range(701, 1201))  # limit defaults to 500
    assert [row["id"] for row in capped.json()] == list(range(1, 1001))  # at most 1000
    assert beyond.json() == []


async def test_trades_are_the_most_recent(simulator: Simulator) -> None:
    simulator.publish([make_tick(trade_id, BASE_MS + trade_id) for trade_id in range(1, 11)])
    with trio.fail_after(5):
        response = await get(simulator, "/api/v3/trades", symbol="BTCUSDT", limit=4)
    assert [row["id"] for row in response.json()] == [7, 8, 9, 10]
    assert response.headers["X-MBX-USED-WEIGHT-1M"] == "25"


async def test_rest_shows_only_published_trades(simulator: Simulator) -> None:
    with trio.fail_after(5):
        assert (await get(simulator, "/api/v3/trades", symbol="ETHUSDT")).json() == []
        simulator.publish([make_tick(1, BASE_MS, symbol="ETHUSDT")])
        assert [row["id"] for row in (await get(simulator, "/api/v3/trades", symbol="ETHUSDT")).json()] == [1]


async def test_klines_match_a_hand_computed_candle(simulator: Simulator) -> None:
    simulator.publish([
        make_tick(1, BASE_MS + 1_000, price="100.00", quantity="2", maker=False),
        make_tick(2, BASE_MS + 20_000, price="103.50", quantity="1", maker=True),
        make_tick(3, BASE_MS + 40_000, price="99.25", quantity="0.5", maker=False),
        make_tick(4, BASE_MS + 59_999, price="101.00", quantity="1", maker=True),
        make_tick(5, BASE_MS + 3 * MINUTE + 5, price="102.00", quantity="1", maker=False),
    ])
    with trio.fail_after(5):
        response = await get(simulator, "/api/v3/klines", symbol="BTCUSDT", interval="1m", startTime=BASE_MS)
    assert response.headers["X-MBX-USED-WEIGHT-1M"] == "2"
    rows = response.json()
    # volume 4.5; quote 200 + 103.5 + 49.625 + 101 = 454.125; taker buys: trades 1 and 3.
    assert rows[0] == [BASE_MS, "100.00000000", "103.50000000", "99.25000000", "101.00000000", "4.50000000",
                       BASE_MS + MINUTE - 1, "454.12500000", 4, "2.50000000", "249.62500000", "0"]
    # Minutes without trades are there, flat at the previous close, as Binance reports them.
    assert rows[1] == [BASE_MS + MINUTE, "101.00000000", "101.00000000", "101.00000000", "101.00000000",
                       "0.00000000", BASE_MS + 2 * MINUTE - 1, "0.00000000", 0, "0.00000000", "0.00000000", "0"]
    assert [row[0] for row in rows] == [BASE_MS + minute * MINUTE for minute in range(4)]
    with trio.fail_after(5):
        latest = await get(simulator, "/api/v3/klines", symbol="BTCUSDT", interval="1m", limit=2)
        ranged = await get(simulator, "/api/v3/klines", symbol="BTCUSDT", interval="1m",
                           startTime=BASE_MS + 1, endTime=BASE_MS + 2 * MINUTE)
        hourly = await get(simulator, "/api/v3/klines", symbol="BTCUSDT", interval="1h")
    assert [row[0] for row in latest.json()] == [BASE_MS + 2 * MINUTE, BASE_MS + 3 * MINUTE]
    assert [row[0] for row in ranged.json()] == [BASE_MS + MINUTE, BASE_MS + 2 * MINUTE]
    assert [(row[0], row[8]) for row in hourly.json()] == [(1723158000000, 5)]  # 23:00 UTC


async def test_kline_from_the_real_lrcbtc_trade_equals_binances_kline() -> None:
    _, frames = read_recording(DATA / "binance-spot-combined-2021-10-12.rec.zst")
    messages = [orjson.loads(frame.frame) for frame in frames]
    trade = next(m["data"] for m in messages if m["stream"] == "lrcbtc@aggTrade")
    kline = next(m["data"]["k"] for m in messages if m["stream"] == "lrcbtc@kline_1m")
    assert trade["f"] == trade["l"] == 12368013  # one aggregate trade = one trade
    tick = Tick(symbol="LRCBTC", price=Decimal(trade["p"]), quantity=Decimal(trade["q"]),
                trade_time_ms=trade["T"], event_time_ms=trade["E"], trade_id=trade["f"], is_buyer_maker=trade["m"])
    config = SimulatorConfig(source=ManualSource(symbols=("LRCBTC",), initial=(tick,)))
    with trio.fail_after(5):
        async with open_simulator(config) as sim:
            response = await get(sim, "/api/v3/klines", symbol="LRCBTC", interval="1m", startTime=kline["t"])
    row = response.json()[0]
    assert row == [kline["t"], kline["o"], kline["h"], kline["l"], kline["c"], kline["v"], kline["T"], kline["q"],
                   kline["n"], kline["V"], kline["Q"], "0"]


async def test_exchange_info_lists_trading_symbols_and_rate_limits(simulator: Simulator) -> None:
    with trio.fail_after(5):
        everything = await get(simulator, "/api/v3/exchangeInfo")
        one = await get(simulator, "/api/v3/exchangeInfo", symbol="ETHUSDT")
        several = await get(simulator, "/api/v3/exchangeInfo", symbols='["ETHUSDT","BTCUSDT"]')
        unknown = await get(simulator, "/api/v3/exchangeInfo", symbol="NOPE")
    body = everything.json()
    assert {(s["symbol"], s["status"], s["baseAsset"], s["quoteAsset"]) for s in body["symbols"]} == {
        ("BTCUSDT", "TRADING", "BTC", "USDT"), ("ETHUSDT", "TRADING", "ETH", "USDT")}
    assert {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 6000} in body[
        "rateLimits"]
    assert [s["symbol"] for s in one.json()["symbols"]] == ["ETHUSDT"]
    assert [s["symbol"] for s in several.json()["symbols"]] == ["ETHUSDT", "BTCUSDT"]
    assert (unknown.status_code, unknown.json()["code"]) == (400, -1121)
    assert everything.headers["X-MBX-USED-WEIGHT-1M"] == "20"


@pytest.mark.parametrize(
    ("path", "params", "code"),
    [
        ("/api/v3/trades", {"symbol": "DOGEBTC"}, -1121),
        ("/api/v3/historicalTrades", {}, -1102),
        ("/api/v3/historicalTrades", {"symbol": "BTCUSDT", "limit": "ten"}, -1100),
        ("/api/v3/historicalTrades", {"symbol": "BTCUSDT", "fromId": "-5"}, -1100),
        ("/api/v3/klines", {"symbol": "BTCUSDT"}, -1102),
        ("/api/v3/klines", {"symbol": "BTCUSDT", "interval": "7m"}, -1120),
        ("/api/v3/klines", {"symbol": "BTCUSDT", "interval": "1m", "startTime": "x"}, -1100),
        ("/api/v3/klines", {"symbol": "BTCUSDT", "interval": "1m", "startTime": "9", "endTime": "1"}, -1023),
    ],
)
async def test_bad_parameters_get_binance_errors(simulator: Simulator, path: str, params: dict[str, str],
                                                 code: int) -> None:
    with trio.fail_after(5):
        response = await get(simulator, path, **params)
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == code and isinstance(body["msg"], str)
    if code == -1121:
        assert body == {"code": -1121, "msg": "Invalid symbol."}


async def test_weight_budget_answers_429_with_retry_after(autojump_clock: trio.abc.Clock) -> None:
    config = SimulatorConfig(source=ManualSource(symbols=("BTCUSDT",)), limits=Limits(rest_weight_per_minute=60))
    with trio.fail_after(600):
        async with open_simulator(config) as sim, httpx.AsyncClient(base_url=sim.rest_url, timeout=None) as client:
            await trio.sleep(60 - trio.current_time() % 60)  # the start of a weight window
            used = []
            for _ in range(2):
                response = await client.get("/api/v3/trades", params={"symbol": "BTCUSDT"})
                used.append(response.headers["X-MBX-USED-WEIGHT-1M"])
            refused = await client.get("/api/v3/trades", params={"symbol": "BTCUSDT"})
            assert used == ["25", "50"]
            assert refused.status_code == 429
            assert refused.json()["code"] == -1003
            retry_after = int(refused.headers["Retry-After"])
            assert 1 <= retry_after <= 60
            # A cheap request still fits; after Retry-After the budget is back.
            cheap = await client.get("/api/v3/klines", params={"symbol": "BTCUSDT", "interval": "1m"})
            assert cheap.status_code == 200
            await trio.sleep(retry_after)
            assert (await client.get("/api/v3/trades", params={"symbol": "BTCUSDT"})).status_code == 200
            assert sim.stats.rest_rejected == 1


async def test_retained_trades_are_capped_oldest_first() -> None:
    config = SimulatorConfig(source=ManualSource(symbols=("BTCUSDT",)), retained_trades=5)
    with trio.fail_after(5):
        async with open_simulator(config) as sim:
            sim.publish([make_tick(trade_id, BASE_MS + trade_id) for trade_id in range(1, 13)])
            assert [tick.trade_id for tick in sim.published("BTCUSDT")] == [8, 9, 10, 11, 12]
            response = await get(sim, "/api/v3/historicalTrades", symbol="BTCUSDT", fromId=1)
    assert [row["id"] for row in response.json()] == [8, 9, 10, 11, 12]
