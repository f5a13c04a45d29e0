"""The REST routes through a real socket: httpx against Hypercorn on loopback, over the real store parts."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import httpx
import pytest
import trio
from web_harness import T0_MS, Harness, make_ticks, running_web, wait_until

MINUTE_MS = 60_000


def exact_json(response: httpx.Response) -> Any:
    """The body with decimals kept exact (floats would hide a wrong digit)."""
    return json.loads(response.text, parse_float=Decimal)


def assert_error(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert body["error"]["code"] == code, body
    assert "Traceback" not in response.text
    message: str = body["error"]["message"]
    assert message
    return message


async def test_ticks_are_empty_before_any_trade_then_latest_per_symbol() -> None:
    with trio.fail_after(20):
        async with running_web() as web, httpx.AsyncClient(base_url=web.base_url) as client:
            assert (await client.get("/api/ticks")).json() == {}
            btc = make_ticks("BTCUSDT", 100, 5)
            eth = make_ticks("ETHUSDT", 900, 3, price="2683.80")
            await web.publish_and_settle([*btc, *eth])
            body = exact_json(await client.get("/api/ticks"))
    assert set(body) == {"BTCUSDT", "ETHUSDT"}
    last = btc[-1]
    assert body["BTCUSDT"] == {
        "symbol": "BTCUSDT",
        "price": last.price,
        "quantity": last.quantity,
        "timestamp": "2024-08-08T23:55:00.400+00:00",
        "event_time": "2024-08-08T23:55:00.401+00:00",
        "trade_id": 104,
        "is_buyer_maker": True,
    }
    assert body["ETHUSDT"]["trade_id"] == 902


async def test_tick_of_one_symbol_accepts_lower_case() -> None:
    with trio.fail_after(20):
        async with running_web() as web, httpx.AsyncClient(base_url=web.base_url) as client:
            await web.publish_and_settle(make_ticks("ETHUSDT", 7, 2, price="2683.80"))
            response = await client.get("/api/ticks/ethusdt")
    assert response.status_code == 200
    tick = exact_json(response)
    assert tick["trade_id"] == 8
    assert tick["price"] == Decimal("2683.81")
    assert tick["quantity"] == Decimal("0.002")


async def test_tick_errors_unknown_invalid_and_no_data() -> None:
    with trio.fail_after(20):
        async with running_web() as web, httpx.AsyncClient(base_url=web.base_url) as client:
            assert "SOLUSDT" in assert_error(await client.get("/api/ticks/SOLUSDT"), 404, "unknown_symbol")
            assert_error(await client.get("/api/ticks/BTC-USDT"), 400, "invalid_symbol")
            assert_error(await client.get("/api/ticks/BTCUSDT"), 404, "no_data")


async def publish_minutes(web: Harness, symbol: str, minutes: int, per_minute: int = 6) -> list[Any]:
    """Ticks spread over ``minutes`` minutes from T0 (the last minute stays open)."""
    ticks = make_ticks(symbol, 1000, minutes * per_minute, step_ms=MINUTE_MS // per_minute)
    await web.publish_and_settle(ticks)
    return ticks


async def test_candles_oldest_first_with_the_open_one_last_and_exact_fields() -> None:
    with trio.fail_after(20):
        async with running_web() as web, httpx.AsyncClient(base_url=web.base_url) as client:
            ticks = await publish_minutes(web, "BTCUSDT", 3)
            response = await client.get("/api/candles/BTCUSDT", params={"interval": "1m"})
    assert response.status_code == 200, response.text
    candles = exact_json(response)
    assert [candle["open_time"] for candle in candles] == [
        "2024-08-08T23:55:00.000+00:00", "2024-08-08T23:56:00.000+00:00", "2024-08-08T23:57:00.000+00:00"]
    assert [candle["closed"] for candle in candles] == [True, True, False]
    first_minute = ticks[:6]
    first = candles[0]
    assert first["close_time"] == "2024-08-08T23:55:59.999+00:00"
    assert first["open"] == first_minute[0].price and first["close"] == first_minute[-1].price
    assert first["high"] == max(tick.price for tick in first_minute)
    assert first["low"] == min(tick.price for tick in first_minute)
    assert first["volume"] == sum(tick.quantity for tick in first_minute)
    assert first["quote_volume"] == sum(tick.price * tick.quantity for tick in first_minute)
    assert first["taker_buy_volume"] == sum(tick.quantity for tick in first_minute if not tick.is_buyer_maker)
    assert (first["trade_count"], first["first_trade_id"], first["last_trade_id"]) == (6, 1000, 1005)
    assert first["revision"] == 0 and first["interval"] == "1m"


async def test_candles_default_interval_is_1m_and_other_intervals_work() -> None:
    with trio.fail_after(20):
        async with running_web() as web, httpx.AsyncClient(base_url=web.base_url) as client:
            await publish_minutes(web, "BTCUSDT", 3)
            default = (await client.get("/api/candles/btcusdt")).json()
            five = (await client.get("/api/candles/BTCUSDT", params={"interval": "5m"})).json()
    assert [candle["interval"] for candle in default] == ["1m"] * 3
    # 23:55 .. 23:57 all fall in the 5m interval opening at 23:55, still open.
    assert len(five) == 1 and five[0]["trade_count"] == 18 and five[0]["closed"] is False


async def test_candles_limit_start_and_end_as_binance_klines() -> None:
    with trio.fail_after(20):
        async with running_web() as web, httpx.AsyncClient(base_url=web.base_url) as client:
            await publish_minutes(web, "BTCUSDT", 6)

            async def open_times(**params: object) -> list[int]:
                response = await client.get("/api/candles/BTCUSDT", params={"interval": "1m", **params})
                assert response.status_code == 200, response.text
                return [(candle["first_trade_id"] - 1000) // 6 for candle in response.json()]

            assert await open_times() == [0, 1, 2, 3, 4, 5]
            assert await open_times(limit=2) == [4, 5]  # no start: the last ones
            assert await open_times(start=T0_MS + MINUTE_MS, limit=2) == [1, 2]  # with start: the first ones
            assert await open_times(start=T0_MS + MINUTE_MS, end=T0_MS + 3 * MINUTE_MS) == [1, 2, 3]
            assert await open_times(start="2024-08-08T23:57:00Z", end="2024-08-08T23:58:00+00:00") == [2, 3]
            # An unencoded '+' arrives as a space.
            url = "/api/candles/BTCUSDT?interval=1m&start=2024-08-09T01:59:00+02:00"
            assert [candle["first_trade_id"] for candle in (await client.get(url)).json()] == [1024, 1030]
            assert await open_times(end=T0_MS + MINUTE_MS - 1) == [0]
            assert await open_times(start=T0_MS + 60 * MINUTE_MS) == []


async def test_candles_older_than_memory_come_from_the_database() -> None:
    with trio.fail_after(20):
        async with running_web(recent_candles=2) as web, httpx.AsyncClient(base_url=web.base_url) as client:
            await publish_minutes(web, "BTCUSDT", 6)
            # Five 1m candles and one 5m candle closed: wait until the writer committed them.
            await wait_until(lambda: web.state.persist.candles_persisted >= 6)
            in_memory = web.state.candles.recent_closed("BTCUSDT", "1m", None, None, 1000)
            response = await client.get("/api/candles/BTCUSDT", params={"interval": "1m"})
            from_start = await client.get("/api/candles/BTCUSDT", params={"start": T0_MS, "limit": 3})
            unaligned = await client.get("/api/candles/BTCUSDT", params={"start": T0_MS + 1, "limit": 2})
    assert len(in_memory) == 2
    candles = response.json()
    assert [candle["first_trade_id"] for candle in candles] == [1000, 1006, 1012, 1018, 1024, 1030]
    assert [candle["closed"] for candle in candles] == [True] * 5 + [False]
    assert [candle["first_trade_id"] for candle in from_start.json()] == [1000, 1006, 1012]
    # A start inside a minute: the first candle is the next one.
    assert [candle["first_trade_id"] for candle in unaligned.json()] == [1006, 1012]


async def test_candles_of_a_symbol_never_seen_is_404_and_of_a_quiet_subscribed_one_empty() -> None:
    with trio.fail_after(20):
        async with running_web() as web, httpx.AsyncClient(base_url=web.base_url) as client:
            assert_error(await client.get("/api/candles/SOLUSDT"), 404, "unknown_symbol")
            response = await client.get("/api/candles/ETHUSDT")
    assert response.status_code == 200 and response.json() == []


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("interval=7m", "unknown_interval"),
        ("interval=1h", "unknown_interval"),  # a Binance interval, but not configured here
        ("limit=0", "invalid_limit"),
        ("limit=1001", "invalid_limit"),
        ("limit=ten", "invalid_limit"),
        ("limit=-5", "invalid_limit"),
        ("start=yesterday", "invalid_time"),
        ("start=2024-08-08T23:55:00", "invalid_time"),  # no zone: ambiguous
        ("end=-1", "invalid_time"),
        ("start=99999999999999999999", "invalid_time"),
        ("start=1723161360000&end=1723161300000", "invalid_range"),
        ("start=2024-08-09T00:00:00Z&end=2024-08-08T00:00:00Z", "invalid_range"),
    ],
)
async def test_candle_query_errors_are_400_with_a_code(query: str, code: str) -> None:
    with trio.fail_after(20):
        async with running_web() as web, httpx.AsyncClient(base_url=web.base_url) as client:
            response = await client.get(f"/api/candles/BTCUSDT?{query}")
    assert_error(response, 400, code)


async def test_symbols_lists_each_subscribed_symbol_with_its_state() -> None:
    with trio.fail_after(20):
        async with running_web() as web, httpx.AsyncClient(base_url=web.base_url) as client:
            await web.publish_and_settle(make_ticks("BTCUSDT", 41, 2))
            status = web.state.ingest.symbol("BTCUSDT")
            status.last_trade_id, status.last_tick_at, status.gaps_found = 42, trio.current_time() - 2.5, 3
            body = (await client.get("/api/symbols")).json()
    rows = {row["symbol"]: row for row in body["symbols"]}
    assert set(rows) == {"BTCUSDT", "ETHUSDT"}
    btc = rows["BTCUSDT"]
    assert btc["last_trade_id"] == 42
    assert btc["last_trade_time"] == "2024-08-08T23:55:00.100+00:00"
    assert 2.5 <= btc["last_tick_age_seconds"] < 10
    assert btc["gaps_found"] == 3 and btc["unrepaired_gaps"] == [] and btc["backfilling"] is False
    assert rows["ETHUSDT"]["last_trade_id"] is None and rows["ETHUSDT"]["last_tick_age_seconds"] is None


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{not json", 400, "invalid_json"),
        (b"", 400, "invalid_json"),
        (b'["SOLUSDT"]', 422, "invalid_body"),
        (b'{"symbol": 5}', 422, "invalid_body"),
        (b'{"symbol": "SOLUSDT", "extra": 1}', 422, "invalid_body"),
        (b'{"symbol": "not a symbol!"}', 422, "invalid_symbol"),
        (b'{"symbol": "btcusdt"}', 409, "already_subscribed"),
    ],
)
async def test_subscribe_errors(body: bytes, status: int, code: str) -> None:
    with trio.fail_after(20):
        async with running_web() as web, httpx.AsyncClient(base_url=web.base_url) as client:
            response = await client.post("/api/symbols", content=body,
                                         headers={"content-type": "application/json"})
    assert_error(response, status, code)


async def test_unsubscribe_errors() -> None:
    with trio.fail_after(20):
        async with running_web() as web, httpx.AsyncClient(base_url=web.base_url) as client:
            assert_error(await client.delete("/api/symbols/SOLUSDT"), 404, "not_subscribed")
            assert_error(await client.delete("/api/symbols/SOL_USDT"), 400, "invalid_symbol")


async def test_unknown_routes_methods_and_huge_bodies_get_the_error_shape() -> None:
    with trio.fail_after(20):
        async with running_web() as web, httpx.AsyncClient(base_url=web.base_url) as client:
            assert_error(await client.get("/nope"), 404, "not_found")
            assert_error(await client.get("/api/candles"), 404, "not_found")
            response = await client.post("/api/ticks")
            message = assert_error(response, 405, "method_not_allowed")
            assert "GET" in message and "GET" in response.headers["allow"]
            assert_error(await client.put("/api/symbols"), 405, "method_not_allowed")
            assert_error(await client.delete("/api/symbols"), 405, "method_not_allowed")
            assert_error(await client.post("/health"), 405, "method_not_allowed")
            message = assert_error(await client.get("/ws"), 400, "websocket_required")
            assert "WebSocket" in message
            big = b'{"symbol": "' + b"A" * 100_000 + b'"}'
            assert_error(await client.post("/api/symbols", content=big), 413, "payload_too_large")


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/api/ticks/%00", 400, "invalid_symbol"),
        ("/api/ticks/" + "A" * 5000, 400, "invalid_symbol"),
        ("/api/candles/BTCUSDT?limit=%FF", 400, "invalid_limit"),
        ("/api/candles/BTCUSDT?start=%00", 400, "invalid_time"),
        ("/api/candles/BTCUSDT?interval=%E2%82%AC", 400, "unknown_interval"),
        ("/api/candles/%20", 400, "invalid_symbol"),
        ("/api/candles/BTCUSDT?start=1e3", 400, "invalid_time"),
        ("/api/candles/BTCUSDT?start=2024-13-45T99:00:00Z", 400, "invalid_time"),
        ("/api/ticks/..%2F..%2Fetc", 404, "not_found"),
        ("/api/candles/BTCUSDT?limit=1&limit=2000", 400, "repeated_parameter"),
        ("/api/candles/BTCUSDT?limit%00=1", 400, "unknown_parameter"),
        # The one odd input that is served: a valid ISO-8601 time with an unencoded '+' (it arrives as a space).
        ("/api/candles/BTCUSDT?start=2024-08-08T23:55:00+00:00", 200, None),
    ],
)
async def test_odd_input_never_gets_a_500(path: str, status: int, code: str | None) -> None:
    with trio.fail_after(20):
        async with running_web() as web, httpx.AsyncClient(base_url=web.base_url) as client:
            response = await client.get(path)
    assert "Traceback" not in response.text
    if code is None:
        assert response.status_code == status, response.text
        assert response.json() == []  # no candles yet
    else:
        assert_error(response, status, code)
