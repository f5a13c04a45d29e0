"""What the simulator publishes: recordings at their pace, faster, unpaced and looped; the synthetic market."""

from __future__ import annotations

import itertools
from decimal import Decimal
from pathlib import Path

import orjson
import trio
from ws_client import open_websocket_client

from app.convert import parse_trade_frame
from app.recording import read_recording
from app.replay.config import ReplaySource, SimulatorConfig, SyntheticSource
from app.replay.simulator import open_simulator
from app.replay.sources import SyntheticMarket, load_recording, replay_schedule, synthetic_profiles

DATA = Path(__file__).resolve().parents[1] / "app" / "data"
DEMO = DATA / "demo-binance-2024-08-08.rec.zst"
SYNTHETIC = DATA / "synthetic-demo.rec.zst"
COMBINED = DATA / "binance-spot-combined-2021-10-12.rec.zst"


def frames_within(path: Path, seconds: float) -> int:
    _, frames = read_recording(path)
    first = frames[0].recv_ns
    return sum(1 for frame in frames if frame.recv_ns - first <= seconds * 1e9)


async def test_replay_keeps_the_original_pace(autojump_clock: trio.abc.Clock) -> None:
    with trio.fail_after(600):
        source = ReplaySource(SYNTHETIC, speed=1.0, recording=load_recording(SYNTHETIC))
        async with open_simulator(SimulatorConfig(source=source)) as sim:
            start = trio.current_time()
            await trio.sleep_until(start + 10.0005)
            assert sim.published_count() == frames_within(SYNTHETIC, 10.0)
            await trio.sleep_until(start + 30.0005)
            assert sim.published_count() == frames_within(SYNTHETIC, 30.0)


async def test_replay_at_speed_ten_is_ten_times_faster(autojump_clock: trio.abc.Clock) -> None:
    with trio.fail_after(600):
        source = ReplaySource(SYNTHETIC, speed=10.0, recording=load_recording(SYNTHETIC))
        async with open_simulator(SimulatorConfig(source=source)) as sim:
            await trio.sleep_until(trio.current_time() + 6.0005)
            assert sim.published_count() == frames_within(SYNTHETIC, 60.0)


async def test_unpaced_replay_publishes_every_trade_in_order() -> None:
    header, frames = read_recording(DEMO)
    with trio.fail_after(20):
        async with open_simulator(SimulatorConfig(source=ReplaySource(DEMO, speed=0))) as sim:
            await sim.wait_source_done()
            published = {symbol: sim.published(symbol) for symbol in header.symbols}
    assert sum(len(ticks) for ticks in published.values()) == len(frames) == 34419
    for ticks in published.values():
        ids = [tick.trade_id for tick in ticks]
        assert ids == list(range(ids[0], ids[0] + len(ids)))
    assert published["BTCUSDT"][0] == parse_trade_frame(frames[0].frame)


async def test_subscriber_of_an_unpaced_replay_gets_every_frame_byte_for_byte() -> None:
    _, frames = read_recording(COMBINED)
    streams = list(dict.fromkeys(orjson.loads(frame.frame)["stream"] for frame in frames))
    config = SimulatorConfig(source=ReplaySource(COMBINED, speed=0), wait_for_subscribers=1)
    with trio.fail_after(10):
        async with open_simulator(config) as sim, open_websocket_client(sim.stream_url(*streams)) as socket:
            received = [await socket.get_message() for _ in frames]
            await sim.wait_source_done()
            assert sim.published_count() == 0  # depth, book tickers, aggregate trades, klines: no @trade
    assert received == [frame.frame for frame in frames]


def test_looping_shifts_ids_and_times_so_they_stay_consecutive() -> None:
    recording = load_recording(SYNTHETIC)
    one_pass = len(recording.frames)
    events = [item for item in itertools.islice(replay_schedule(recording, loop=True), 3 * one_pass)]
    by_symbol: dict[str, list[int]] = {}
    times: dict[str, list[int]] = {}
    for item in events:
        assert item.event.tick is not None
        by_symbol.setdefault(item.event.tick.symbol, []).append(item.event.tick.trade_id)
        times.setdefault(item.event.tick.symbol, []).append(item.event.tick.trade_time_ms)
    for symbol, ids in by_symbol.items():
        assert ids == list(range(ids[0], ids[0] + len(ids))), symbol
        assert times[symbol] == sorted(times[symbol])
    offsets = [item.offset_ns for item in events]
    assert offsets == sorted(offsets)
    # Later passes are re-rendered in Binance's layout, equal to the first apart from id and times.
    second = events[one_pass]
    assert second.event.tick is not None
    assert parse_trade_frame(second.event.combined) == second.event.tick


async def test_looping_replay_keeps_publishing_past_the_end() -> None:
    recording = load_recording(SYNTHETIC)
    config = SimulatorConfig(source=ReplaySource(SYNTHETIC, speed=0, loop=True))
    with trio.fail_after(20):
        async with open_simulator(config) as sim:
            await sim.wait_published(2 * len(recording.frames) + 10)
            for symbol in sim.symbols:
                ids = [tick.trade_id for tick in sim.published(symbol)]
                assert ids == list(range(ids[0], ids[0] + len(ids)))


def test_synthetic_market_is_seeded_and_realistic() -> None:
    first = [item.event.combined for item in itertools.islice(SyntheticMarket(5, 50.0, 42, 1_700_000_000_000), 2000)]
    again = [item.event.combined for item in itertools.islice(SyntheticMarket(5, 50.0, 42, 1_700_000_000_000), 2000)]
    other = [item.event.combined for item in itertools.islice(SyntheticMarket(5, 50.0, 43, 1_700_000_000_000), 2000)]
    assert first == again != other
    market = SyntheticMarket(5, 50.0, 42, 1_700_000_000_000)
    items = list(itertools.islice(market, 5000))
    profiles = {profile.symbol: profile for profile in market.profiles}
    ids: dict[str, list[int]] = {}
    for item in items:
        tick = item.event.tick
        assert tick is not None
        profile = profiles[tick.symbol]
        assert tick.price % profile.tick_size == 0 and tick.price > 0
        assert tick.quantity % profile.lot_size == 0 and tick.quantity > 0
        assert tick.event_time_ms >= tick.trade_time_ms
        ids.setdefault(tick.symbol, []).append(tick.trade_id)
        assert parse_trade_frame(item.event.combined) == tick
    for symbol_ids in ids.values():
        assert symbol_ids == list(range(symbol_ids[0], symbol_ids[0] + len(symbol_ids)))
    # Poisson arrivals of taker orders at 50/s (each filling one or more makers).
    arrivals = sorted({item.offset_ns for item in items})
    mean_gap = (arrivals[-1] - arrivals[0]) / (len(arrivals) - 1) / 1e9
    assert 0.017 < mean_gap < 0.023
    btc = [item.event.tick.price for item in items if item.event.tick and item.event.tick.symbol == "BTCUSDT"]
    assert all(abs(price / Decimal("61837.63") - 1) < Decimal("0.05") for price in btc)


def test_synthetic_symbol_names_go_on_with_generated_ones() -> None:
    names = [profile.symbol for profile in synthetic_profiles(2000, seed=1)]
    assert names[:2] == ["BTCUSDT", "ETHUSDT"]
    assert "SYM0001USDT" in names and names[-1] == "SYM1992USDT"
    assert len(set(names)) == 2000


async def test_synthetic_load_with_thousands_of_symbols_delivers_the_ground_truth() -> None:
    # Paced: an unpaced infinite market would starve a client that shares this process's CPU.
    source = SyntheticSource(symbols=2000, rate=4_000.0, seed=5)
    config = SimulatorConfig(source=source, wait_for_subscribers=1)
    streams = ("btcusdt@trade", "ethusdt@trade", "sym0001usdt@trade")
    with trio.fail_after(20):
        async with open_simulator(config) as sim, open_websocket_client(sim.stream_url(*streams)) as socket:
            received = [parse_trade_frame(await socket.get_message()) for _ in range(1000)]
            assert len(sim.symbols) == 2000
            for symbol in ("BTCUSDT", "ETHUSDT", "SYM0001USDT"):
                mine = [tick for tick in received if tick.symbol == symbol]
                assert mine == sim.published(symbol)[: len(mine)]
