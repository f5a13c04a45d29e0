"""Candles at the edges (issue 17): the first candle of every interval is Binance's, or says ``complete: false``.

The service starts in the middle of a shipped real recording: the simulator streams from a trade drawn at random
(seeded, so a failure repeats), and its REST API holds every trade before it, as on a real start-up.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.lowlevel
from test_store_end_to_end import binance_row, eventually, exact_json, kline_row

import app
from app import service
from app.intervals import INTERVAL_NAMES, Interval
from app.model import Tick
from app.replay.config import ManualSource, SimulatorConfig
from app.replay.faults import RestFault
from app.replay.klines import build_klines
from app.replay.simulator import Simulator, open_simulator
from app.replay.sources import load_recording
from app.settings import Settings

DATA = Path(app.__file__).parent / "data"
# The shipped real recordings with @trade frames (binance-spot-combined-2021-10-12 has none: depth, bookTicker,
# aggTrade and kline frames only).
REAL_RECORDINGS = ("demo-binance-2024-08-08.rec.zst",)
# Trades published per call, so the simulator's outbox for the service never counts it as a slow consumer.
PUBLISH_CHUNK = 500


def recorded_trades(name: str) -> list[Tick]:
    recording = load_recording(DATA / name)
    return [event.tick for _, event in recording.frames if event.tick is not None]


async def served_candles(
    api: httpx.AsyncClient, symbol: str, interval: str, start_ms: int, end_ms: int
) -> list[dict[str, Any]]:
    candles: list[dict[str, Any]] = exact_json(await api.get(
        f"/api/candles/{symbol}", params={"interval": interval, "start": start_ms, "end": end_ms, "limit": 1000}))
    return candles


def whole_recording_klines(trades: list[Tick], interval: Interval, start_ms: int) -> list[tuple[object, ...]]:
    """Binance's klines built from every trade of the recording (the simulator's kline builder), from
    ``start_ms`` on."""
    rows = build_klines(trades, interval)
    return [binance_row(row) for row in rows if isinstance(row[0], int) and row[0] >= start_ms]


async def run_from_cut(
    tmp_path: Path, trades: list[Tick], cut: int, refused: str | None = None, added: tuple[str, ...] = (),
    intervals: tuple[str, ...] = INTERVAL_NAMES,
) -> tuple[Simulator, dict[tuple[str, str], list[dict[str, Any]]], dict[tuple[str, str], list[tuple[object, ...]]],
           str]:
    """Runs the service from ``trades[cut]`` on; returns, per (symbol, interval), the candles it serves from the
    cut's interval on once it has every trade and its seeds are settled, and the exchange's klines for them.
    The ``added`` symbols are not configured: they are added with ``POST /api/symbols`` before the cut."""
    symbols = tuple(dict.fromkeys(tick.symbol for tick in trades))
    history, live = trades[:cut], trades[cut:]
    config = SimulatorConfig(source=ManualSource(symbols=symbols, initial=tuple(history)))
    served: dict[tuple[str, str], list[dict[str, Any]]] = {}
    expected: dict[tuple[str, str], list[tuple[object, ...]]] = {}
    with trio.fail_after(180):
        async with open_simulator(config) as simulator, trio.open_nursery() as nursery:
            if refused is not None:  # every answer of that endpoint is an HTML error page
                simulator.fail_rest(refused, RestFault.INVALID_JSON, times=10_000)
            settings = Settings(
                symbols=tuple(symbol for symbol in symbols if symbol not in added),
                binance_ws_url=simulator.ws_url,
                binance_rest_url=simulator.rest_url,
                candle_intervals=tuple(Interval(name) for name in intervals),
                http_port=0,
                database_url=f"sqlite:///{tmp_path / 'marketdata.sqlite3'}",
            )
            urls = await nursery.start(service.run, settings)
            for symbol in settings.symbols:  # the ingest runs: symbols can be added
                await simulator.wait_subscribed(f"{symbol.lower()}@trade")
            for symbol in added:
                async with httpx.AsyncClient(base_url=urls[0]) as api:
                    response = await api.post("/api/symbols", json={"symbol": symbol})
                    assert response.status_code == 201, response.text
                await simulator.wait_subscribed(f"{symbol.lower()}@trade")
            for start in range(0, len(live), PUBLISH_CHUNK):
                simulator.publish(live[start:start + PUBLISH_CHUNK])
                await trio.lowlevel.checkpoint()
            async with httpx.AsyncClient(base_url=urls[0]) as api:
                for symbol in symbols:
                    mine = [tick for tick in live if tick.symbol == symbol]
                    if not mine:
                        continue

                    async def has_last_trade(symbol: str = symbol, last_id: int = mine[-1].trade_id) -> bool:
                        response = await api.get(f"/api/ticks/{symbol}")
                        return response.status_code == 200 and exact_json(response)["trade_id"] == last_id

                    await eventually(has_last_trade)

                    async def seeds_settled() -> bool:
                        metrics = (await api.get("/metrics")).text
                        return _metric(metrics, "candle_seeds_requested") == (
                            _metric(metrics, "candle_seeds_applied") + _metric(metrics, "candles_incomplete"))

                    await eventually(seeds_settled)
                    for name in intervals:
                        start = Interval(name).open_time(mine[0].trade_time_ms)
                        served[symbol, name] = await served_candles(api, symbol, name, start, mine[-1].trade_time_ms)
                        expected[symbol, name] = whole_recording_klines(
                            [tick for tick in trades if tick.symbol == symbol], Interval(name), start)
                metrics_text = (await api.get("/metrics")).text
            nursery.cancel_scope.cancel()
    return simulator, served, expected, metrics_text


def _metric(text: str, name: str) -> int:
    for line in text.splitlines():
        if line.startswith(f"marketdata_{name}_total ") or line.startswith(f"{name}_total "):
            return int(float(line.split()[-1]))
    raise AssertionError(f"metric {name} not served")


@pytest.mark.slow
@pytest.mark.parametrize("recording", REAL_RECORDINGS)
@pytest.mark.parametrize("draw", range(3))
async def test_every_candle_from_a_random_start_equals_the_one_built_from_the_whole_recording(
    tmp_path: Path, recording: str, draw: int
) -> None:
    trades = await trio.to_thread.run_sync(recorded_trades, recording)
    cut = random.Random(f"{recording}:{draw}").randrange(1, len(trades) - 1)
    _, served, expected, _ = await run_from_cut(tmp_path, trades, cut)
    assert served
    for key, candles in served.items():
        assert [kline_row(candle) for candle in candles] == expected[key], (key, cut)
        assert all(candle["complete"] for candle in candles), (key, cut)


@pytest.mark.slow
async def test_a_first_candle_that_rest_refuses_to_complete_says_complete_false(tmp_path: Path) -> None:
    trades = await trio.to_thread.run_sync(recorded_trades, REAL_RECORDINGS[0])
    cut = random.Random("refused").randrange(len(trades) // 4, len(trades) // 2)
    # A few intervals: each refused seed is retried (the REST client's transient backoff, ~15 s) before it fails.
    _, served, expected, metrics = await run_from_cut(tmp_path, trades, cut, refused="klines",
                                                      intervals=("1s", "1m", "1h", "1d"))
    incomplete = 0
    for key, candles in served.items():
        first, rest = candles[0], candles[1:]
        # The first candle holds only the trades streamed: it is marked, never an ordinary candle.
        if kline_row(first) != expected[key][0]:
            assert not first["complete"], key
        incomplete += not first["complete"]
        assert all(candle["complete"] for candle in rest), key
        assert [kline_row(candle) for candle in rest] == expected[key][1:], key
    assert incomplete == len(served)
    assert _metric(metrics, "candles_incomplete") == len(served)


@pytest.mark.slow
async def test_a_symbol_added_at_run_time_gets_its_first_candles_whole(tmp_path: Path) -> None:
    trades = await trio.to_thread.run_sync(recorded_trades, REAL_RECORDINGS[0])
    cut = random.Random("added").randrange(len(trades) // 4, len(trades) // 2)
    _, served, expected, metrics = await run_from_cut(tmp_path, trades, cut, added=("ETHUSDT",))
    added = {key: candles for key, candles in served.items() if key[0] == "ETHUSDT"}
    assert len(added) == len(INTERVAL_NAMES)
    for key, candles in added.items():
        assert [kline_row(candle) for candle in candles] == expected[key], (key, cut)
        assert all(candle["complete"] for candle in candles), key
    assert _metric(metrics, "candles_incomplete") == 0
