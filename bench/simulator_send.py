"""The simulator's WebSocket send path, alone: the shipped demo recording replayed unpaced (looping) to one raw
client that only reads, in this process. Prints frames per second and process CPU per frame (client included).

    python -m bench.simulator_send [SECONDS] [RUNS]

Not a row of ``python -m bench`` (the service is not involved). To compare two checkouts, run the file from
outside both (``-m`` puts the working directory first on the path) with ``PYTHONPATH=/other/checkout`` for
the other one: ``cd /tmp && PYTHONPATH=/other python /this/bench/simulator_send.py``.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import Request

from app.replay.cli import shipped_recording
from app.replay.config import Limits, ReplaySource, SimulatorConfig
from app.replay.simulator import open_simulator
from app.replay.sources import LoadedRecording, load_recording


async def one_run(path: Path, recording: LoadedRecording, seconds: float) -> tuple[float, float]:
    """(frames per second, CPU microseconds per frame) over ``seconds`` of sending."""
    source = ReplaySource(path, speed=0, loop=True, recording=recording)
    config = SimulatorConfig(source=source, wait_for_subscribers=1, limits=Limits(ping_interval=1e6))
    async with open_simulator(config) as simulator:
        stream = await trio.open_tcp_stream("127.0.0.1", simulator.ws_port)
        client = WSConnection(ConnectionType.CLIENT)
        streams = "/".join(f"{symbol.lower()}@trade" for symbol in simulator.symbols)
        await stream.send_all(client.send(Request(host="127.0.0.1", target=f"/stream?streams={streams}")))
        await stream.receive_some(65536)  # the upgrade, and the first frames
        started, cpu, frames = time.perf_counter(), time.process_time(), simulator.stats.frames_sent
        while time.perf_counter() - started < seconds:
            if not await stream.receive_some(65536):
                break
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        frames = simulator.stats.frames_sent - frames
        await stream.aclose()
    return frames / elapsed, cpu / frames * 1e6


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 4.0
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    path = shipped_recording("demo-binance-2024-08-08")
    assert path is not None
    recording = load_recording(path)
    results = [trio.run(one_run, path, recording, seconds) for _ in range(runs)]
    rates, cpus = zip(*results, strict=True)
    print(f"frames/s median {statistics.median(rates):,.0f}  CPU µs/frame median {statistics.median(cpus):.1f}  "
          f"(runs: {', '.join(f'{rate:,.0f}/{cpu:.1f}' for rate, cpu in results)})")


if __name__ == "__main__":
    main()
