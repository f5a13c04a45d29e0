"""The recording format, the ``record`` command, and a recording -> simulate -> record round trip."""

from __future__ import annotations

import argparse
import gzip
import itertools
from functools import partial
from pathlib import Path

import orjson
import pytest
import trio
from trio_websocket import WebSocketRequest, serve_websocket

from app.ingest.record import RecordOptions, add_record_command, record, record_url
from app.recording import RecordedFrame, RecordingError, RecordingHeader, read_recording, write_recording
from app.replay.cli import add_simulate_command, simulator_config
from app.replay.config import ReplaySource, SimulatorConfig, SyntheticSource
from app.replay.simulator import open_simulator

DATA = Path(__file__).resolve().parents[1] / "app" / "data"
HEADER = RecordingHeader(source="wss://example/stream", symbols=("BTCUSDT",),
                         started_at="2024-08-08T00:00:00.000+00:00")
FRAMES = [RecordedFrame(recv_ns=1_723_161_255_343_000_001, frame='{"a":"\\u00e9 \\"quoted\\""}'),
          RecordedFrame(recv_ns=1_723_161_255_343_000_002, frame="not json, kept as is: ünïcode")]


def test_written_recording_reads_back_exactly(tmp_path: Path) -> None:
    path = tmp_path / "out.rec.zst"
    assert write_recording(path, HEADER, FRAMES) == 2
    assert path.read_bytes()[:4] == b"\x28\xb5\x2f\xfd"  # zstd
    assert read_recording(path) == (HEADER, FRAMES)


@pytest.mark.parametrize("compress", [gzip.compress, lambda data: data], ids=["gzip", "plain"])
def test_gzip_and_plain_recordings_are_read_too(tmp_path: Path, compress: object) -> None:
    lines = [HEADER.to_json()] + [frame.to_json() for frame in FRAMES]
    path = tmp_path / "other.rec"
    path.write_bytes(compress(b"\n".join(lines) + b"\n"))  # type: ignore[operator]
    assert read_recording(path) == (HEADER, FRAMES)


def test_header_line_documents_the_source(tmp_path: Path) -> None:
    header = orjson.loads(HEADER.to_json())
    assert header == {"format": "marketdata-recording", "version": 1, "source": "wss://example/stream",
                      "symbols": ["BTCUSDT"], "started_at": "2024-08-08T00:00:00.000+00:00", "synthetic": False,
                      "note": ""}


@pytest.mark.parametrize(
    "content",
    [b"", b'{"format": "something-else"}\n', b'{"format": "marketdata-recording", "version": 2}\n',
     b'{"format": "marketdata-recording", "version": 1}\n{"recv_ns": "soon", "frame": "x"}\n'],
    ids=["empty", "foreign", "future-version", "bad-frame-line"],
)
def test_invalid_recordings_are_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.rec"
    path.write_bytes(content)
    with pytest.raises(RecordingError):
        read_recording(path)


def test_shipped_recordings_are_labelled() -> None:
    demo, demo_frames = read_recording(DATA / "demo-binance-2024-08-08.rec.zst")
    synthetic, synthetic_frames = read_recording(DATA / "synthetic-demo.rec.zst")
    fixture, fixture_frames = read_recording(DATA / "binance-spot-combined-2021-10-12.rec.zst")
    assert (demo.synthetic, demo.symbols, len(demo_frames)) == (False, ("BTCUSDT", "ETHUSDT"), 34419)
    assert synthetic.synthetic and len(synthetic.symbols) == 4 and len(synthetic_frames) > 1000
    assert (fixture.synthetic, len(fixture_frames)) == (False, 265)
    for frames in (demo_frames, synthetic_frames, fixture_frames):
        times = [frame.recv_ns for frame in frames]
        assert times == sorted(times)


def test_record_url_adds_trade_streams_to_an_endpoint_and_keeps_named_streams() -> None:
    combined = "wss://stream.binance.com:9443/stream?streams=btcusdt@trade/ethusdt@trade"
    assert record_url("wss://stream.binance.com:9443", ("BTCUSDT", "ETHUSDT")) == combined
    assert record_url("wss://stream.binance.com:9443/ws", ("BTCUSDT", "ETHUSDT")) == combined
    assert record_url("ws://127.0.0.1:1/ws/btcusdt@trade", ("BTCUSDT",)) == "ws://127.0.0.1:1/ws/btcusdt@trade"
    named = "ws://127.0.0.1:1/stream?streams=lrcbtc@kline_1m&timeUnit=MICROSECOND"
    assert record_url(named, ("BTCUSDT",)) == named


async def test_recording_replayed_and_recorded_again_is_byte_for_byte_identical(tmp_path: Path) -> None:
    source = DATA / "demo-binance-2024-08-08.rec.zst"
    header, frames = read_recording(source)
    out = tmp_path / "again.rec.zst"
    config = SimulatorConfig(source=ReplaySource(source, speed=0), wait_for_subscribers=1)
    with trio.fail_after(30):
        async with open_simulator(config) as sim, trio.open_nursery() as nursery:
            url = sim.stream_url("btcusdt@trade", "ethusdt@trade")
            options = RecordOptions(url=url, symbols=header.symbols, out=out, progress_interval=0.5)
            await nursery.start(record, options)
            await sim.wait_source_done()
            await sim.wait_until(lambda: sim.stats.frames_sent == len(frames))
            sim.close_all()  # the recorder stops at the close frame, after every frame
    again_header, again = read_recording(out)
    assert [frame.frame for frame in again] == [frame.frame for frame in frames]
    assert again_header.source == url and again_header.symbols == ("BTCUSDT", "ETHUSDT")
    assert all(later.recv_ns >= earlier.recv_ns for earlier, later in itertools.pairwise(again))


async def test_record_command_runs_for_its_duration(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    add_record_command(parser.add_subparsers())
    out = tmp_path / "cli.rec.zst"
    config = SimulatorConfig(source=ReplaySource(DATA / "binance-spot-combined-2021-10-12.rec.zst", speed=0),
                             wait_for_subscribers=1)
    with trio.fail_after(20):
        async with open_simulator(config) as sim:
            streams = "/".join(["lrcbtc@aggTrade", "lrcbtc@kline_1m"])
            args = parser.parse_args(["record", "--url", f"{sim.ws_base_url}/stream?streams={streams}",
                                      "--symbols", "LRCBTC", "--out", str(out), "--duration", "1"])
            # The command runs its own trio.run, so it gets a thread of its own.
            assert await trio.to_thread.run_sync(args.func, args) == 0
    header, frames = read_recording(out)
    assert header.symbols == ("LRCBTC",)
    assert len(frames) == 2 and all("lrcbtc@" in frame.frame for frame in frames)


def test_simulate_command_options_build_the_config() -> None:
    parser = argparse.ArgumentParser()
    add_simulate_command(parser.add_subparsers())
    replay = simulator_config(parser.parse_args(
        ["simulate", "--recording", "demo-binance-2024-08-08", "--speed", "5", "--loop", "--port", "9443",
         "--rest-port", "9444", "--drop-after", "100"]))
    assert replay.source == ReplaySource(DATA / "demo-binance-2024-08-08.rec.zst", speed=5.0, loop=True)
    assert (replay.ws_port, replay.rest_port, replay.faults.drop_after_frames) == (9443, 9444, 100)
    synthetic = simulator_config(parser.parse_args(
        ["simulate", "--synthetic", "--symbols", "1000", "--rate", "5000", "--seed", "9"]))
    assert synthetic.source == SyntheticSource(symbols=1000, rate=5000.0, seed=9)
    with pytest.raises(SystemExit):
        parser.parse_args(["simulate", "--synthetic", "--recording", "x"])


async def test_simulate_command_prints_its_urls_and_runs(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    add_simulate_command(parser.add_subparsers())
    args = parser.parse_args(["simulate", "--synthetic", "--symbols", "3", "--rate", "50", "--duration", "0.3"])
    with trio.fail_after(20):
        assert await trio.to_thread.run_sync(args.func, args) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("websocket ws://127.0.0.1:") and printed[0].endswith("/ws")
    assert printed[1].endswith("/stream?streams=btcusdt@trade/ethusdt@trade/bnbusdt@trade")
    assert printed[2].startswith("rest      http://127.0.0.1:")


async def test_record_writes_text_frames_exactly_and_skips_binary_ones(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    texts = ['{"stream":"btcusdt@trade","note":"ünïcode € 😀"}', '{"a":"\\u00e9"}', "not json, kept as is"]

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        await ws.send_message(texts[0])
        await ws.send_message(b"\xff\xfe binary")
        for text in texts[1:]:
            await ws.send_message(text)
        await ws.aclose()

    out = tmp_path / "exact.rec.zst"
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(partial(serve_websocket, handler, "127.0.0.1", 0, ssl_context=None))
            options = RecordOptions(url=f"ws://127.0.0.1:{server.port}/ws/btcusdt@trade", symbols=("BTCUSDT",),
                                    out=out)
            assert await record(options) == 3
            nursery.cancel_scope.cancel()
    assert [frame.frame for frame in read_recording(out)[1]] == texts
    assert "binary frame skipped" in caplog.text
