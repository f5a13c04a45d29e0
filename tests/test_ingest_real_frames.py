"""The real Binance frames shipped in the package: every non-trade event is skipped cleanly."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import orjson
import pytest
import trio
from test_ingest_support import make_ticks, running_ingest, trades

import app
from app.convert import FrameError, parse_trade_frame
from app.recording import read_recording
from app.replay.simulator import Simulator

FIXTURE = Path(app.__file__).parent / "data" / "binance-spot-combined-2021-10-12.rec.zst"


def fixture_frames() -> list[str]:
    _, frames = read_recording(FIXTURE)
    return [frame.frame for frame in frames]


def test_the_parser_rejects_every_non_trade_event_naming_it() -> None:
    streams: Counter[str] = Counter()
    for frame in fixture_frames():
        with pytest.raises(FrameError) as raised:
            parse_trade_frame(frame)
        assert raised.value.reason.startswith("not a trade event")
        streams[orjson.loads(frame)["stream"].partition("@")[2]] += 1
    assert set(streams) == {"depth@100ms", "bookTicker", "aggTrade", "kline_1m"}
    assert sum(streams.values()) == 265


async def test_the_client_skips_every_real_non_trade_frame_and_keeps_streaming(simulator: Simulator) -> None:
    frames = fixture_frames()
    with trio.fail_after(10):
        async with running_ingest(simulator, ["BTCUSDT"]) as ingest:
            await simulator.wait_subscribed("btcusdt@trade")
            simulator.publish(make_ticks("BTCUSDT", 1, 2))
            await ingest.wait_received(2)
            simulator.send_frames(frames)
            simulator.publish(make_ticks("BTCUSDT", 3, 2))
            await ingest.wait_received(4)
            assert trades(ingest.received) == trades(simulator.published("BTCUSDT"))
            # Each one is a known kind of event that is not a trade: skipped and counted, not an error.
            assert ingest.status.unknown_events == len(frames)
            assert ingest.status.parse_errors == 0
            assert simulator.stats.connections_accepted == 1
