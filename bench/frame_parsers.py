"""``python -m bench.frame_parsers``: the exchange socket's frame parser against ``websockets``' sans-I/O
protocol, in process: the feeder's frames (the shipped recording in Binance's combined layout) cut into 64 KiB
reads, each read parsed into a batch, then each message through ``orjson.loads`` and ``trade_from_payload``
as ``app/ingest/connection.py`` does. CPU time per frame (``time.process_time``, steadier than wall time on a
shared machine), median of the repeats; the parsers alternate within each repeat.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence

import orjson

from app.convert import trade_from_payload
from app.ingest.frame_reader import FrameReader, Received
from app.ingest.stream_socket import RECEIVE_BYTES
from bench.feeder import DEMO_RECORDING, recording_ticks, render_frames
from bench.websockets_reader import WebsocketsFrameReader

PARSERS: dict[str, Callable[[], FrameReader | WebsocketsFrameReader]] = {
    "frame_reader (hand-written)": FrameReader,
    "websockets ClientProtocol": WebsocketsFrameReader,
}


def reads_of(frame_count: int) -> list[bytes]:
    wire = b"".join(frame for _, frame in render_frames(recording_ticks(DEMO_RECORDING), frame_count))
    return [wire[start : start + RECEIVE_BYTES] for start in range(0, len(wire), RECEIVE_BYTES)]


def parse_only(make: Callable[[], FrameReader | WebsocketsFrameReader], reads: Sequence[bytes]) -> int:
    reader = make()
    feed: Callable[[bytes], Received] = reader.feed
    return sum(len(feed(data).messages) for data in reads)


def pipeline(make: Callable[[], FrameReader | WebsocketsFrameReader], reads: Sequence[bytes]) -> int:
    reader = make()
    feed: Callable[[bytes], Received] = reader.feed
    loads = orjson.loads
    trades = 0
    for data in reads:
        ticks = [trade_from_payload(loads(message)["data"]) for message in feed(data).messages]
        trades += len(ticks)
    return trades


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.frame_parsers", description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=300_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    reads = reads_of(args.frames)
    print(f"{args.frames:,} frames in {len(reads):,} reads of {RECEIVE_BYTES:,} bytes; CPU µs per frame, "
          f"median of {args.repeat}")
    for stage in (parse_only, pipeline):
        figures: dict[str, list[float]] = {name: [] for name in PARSERS}
        for _ in range(args.repeat):
            for name, make in PARSERS.items():
                started = time.process_time()
                count = stage(make, reads)
                elapsed = time.process_time() - started
                assert count == args.frames, (name, count)
                figures[name].append(elapsed / count * 1e6)
        ours, theirs = (statistics.median(values) for values in figures.values())
        for name, values in figures.items():
            print(f"  {stage.__name__:<10} {name:<28} {statistics.median(values):6.3f} µs "
                  f"({min(values):.3f}-{max(values):.3f})")
        print(f"  {stage.__name__:<10} websockets / hand-written  {theirs / ours:6.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
