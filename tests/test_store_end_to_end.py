"""Simulator -> ingest -> store -> aggregator -> HTTP API, every interval, against the simulator's klines."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

import app
from app import service
from app.intervals import INTERVAL_NAMES, Interval
from app.model import ms_from_utc
from app.replay.config import ReplaySource, SimulatorConfig
from app.replay.simulator import open_simulator
from app.replay.sources import load_recording
from app.settings import Settings

DEMO = Path(app.__file__).parent / "data" / "demo-binance-2024-08-08.rec.zst"
KLINE_FIELDS = ("open_time", "open", "high", "low", "close", "volume", "close_time", "quote_volume", "trade_count",
                "taker_buy_volume", "taker_buy_quote_volume")


def exact_json(response: httpx.Response) -> Any:
    """JSON with numbers as exact Decimals (the API serves decimals as JSON numbers)."""
    assert response.status_code == 200, response.text
    return json.loads(response.text, parse_float=Decimal, parse_int=int)


def kline_row(candle: dict[str, Any]) -> tuple[object, ...]:
    """The service's candle in the fields of a Binance kline row."""
    def epoch_ms(text: str) -> int:
        return ms_from_utc(datetime.fromisoformat(text))

    row = dict(candle, open_time=epoch_ms(candle["open_time"]), close_time=epoch_ms(candle["close_time"]))
    return tuple(row[field] if field in ("open_time", "close_time", "trade_count") else Decimal(row[field])
                 for field in KLINE_FIELDS)


def binance_row(kline: list[Any]) -> tuple[object, ...]:
    open_time, o, h, low, c, v, close_time, q, n, taker_v, taker_q, _ = kline
    return (open_time, Decimal(o), Decimal(h), Decimal(low), Decimal(c), Decimal(v), close_time, Decimal(q), n,
            Decimal(taker_v), Decimal(taker_q))


async def eventually(check: Callable[[], Awaitable[bool]], poll_seconds: float = 0.05) -> None:
    """Polls ``check`` (another component catching up); bound by the test's ``fail_after``."""
    for _ in range(100_000):
        if await check():
            return
        await trio.sleep(poll_seconds)


@pytest.mark.slow
async def test_every_candle_of_the_demo_recording_equals_the_simulators_klines(tmp_path: Path) -> None:
    recording = await trio.to_thread.run_sync(load_recording, DEMO)
    config = SimulatorConfig(source=ReplaySource(DEMO, speed=0, recording=recording), wait_for_subscribers=1)
    with trio.fail_after(120):
        async with open_simulator(config) as simulator, trio.open_nursery() as nursery:
            settings = Settings(
                symbols=simulator.symbols,
                binance_ws_url=simulator.ws_url,
                binance_rest_url=simulator.rest_url,
                candle_intervals=tuple(Interval(name) for name in INTERVAL_NAMES),
                http_port=0,
                database_url=f"sqlite:///{tmp_path / 'marketdata.sqlite3'}",
            )
            urls = await nursery.start(service.run, settings)
            await simulator.wait_source_done()
            async with httpx.AsyncClient(base_url=urls[0]) as api, \
                    httpx.AsyncClient(base_url=simulator.rest_url) as exchange:
                for symbol in simulator.symbols:
                    published = simulator.published(symbol)
                    assert len(published) > 10_000  # several minutes of real trades
                    first_ms, last_ms = published[0].trade_time_ms, published[-1].trade_time_ms

                    async def has_last_trade(symbol: str = symbol, last_id: int = published[-1].trade_id) -> bool:
                        response = await api.get(f"/api/ticks/{symbol}")
                        return response.status_code == 200 and exact_json(response)["trade_id"] == last_id

                    await eventually(has_last_trade)
                    for name in INTERVAL_NAMES:
                        start = Interval(name).open_time(first_ms)
                        klines = exact_json(await exchange.get("/api/v3/klines", params={
                            "symbol": symbol, "interval": name, "startTime": start, "endTime": last_ms,
                            "limit": 1000}))
                        expected = [binance_row(kline) for kline in klines]
                        assert len(expected) < 1000  # the whole span in one page
                        for _ in range(1000):  # the aggregator may still be catching up
                            mine = exact_json(await api.get(f"/api/candles/{symbol}", params={
                                "interval": name, "start": start, "end": last_ms, "limit": 1000}))
                            if [kline_row(candle) for candle in mine] == expected and all(
                                    candle["complete"] for candle in mine):
                                break
                            await trio.sleep(0.05)
                        assert [kline_row(candle) for candle in mine] == expected, (symbol, name)
                        # Real data over ten minutes: quiet seconds exist, and they are Binance's empty klines.
                        if name == "1s":
                            empty = [candle for candle in mine if candle["trade_count"] == 0]
                            assert empty
                            assert all(candle["first_trade_id"] == candle["last_trade_id"] == -1 for candle in empty)
                        # The first candle is completed from the exchange's kline (revision 1 when it had closed
                        # before the seed arrived); nothing else is revised.
                        assert all(candle["complete"] for candle in mine)
                        assert all(candle["revision"] == 0 for candle in mine[1:])
                        trades = sum(candle["trade_count"] for candle in mine)
                        assert trades == len(published), (symbol, name)
            nursery.cancel_scope.cancel()
