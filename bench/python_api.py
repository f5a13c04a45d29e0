"""The Python API's own costs: decoding the feed's JSON into ticks (exact decimals), and the shipped demo
recording (34,419 trades) replayed unpaced through the embedded service (simulator, service and reader in this
one process) to one ``MarketData.subscribe`` reader, then to one ``open_feed`` client. Prints medians of RUNS.

    python -m bench.python_api [RUNS]

Not a row of ``python -m bench``: the rows there measure the service as users start it (``marketdata serve``).
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import AsyncIterator, Callable

import trio

from app import Settings, open_feed, open_service
from app.convert import api_converter, api_json, ticks_from_api, to_json
from app.model import Tick
from app.testing import exchange_config, open_simulated_exchange

DEMO = "demo-binance-2024-08-08"
FRAME_TICKS = 2_000


def decode_microseconds_per_tick(ticks: list[Tick], decode: Callable[[object], list[Tick]], repeat: int = 5) -> float:
    """The best of ``repeat``: JSON text of one feed frame -> ticks, per tick."""
    frame = b'{"channel":"ticks","data":' + to_json(ticks[:FRAME_TICKS]) + b"}"
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        decoded = decode(api_json(frame)["data"])
        best = min(best, time.perf_counter() - started)
    assert decoded == ticks[:FRAME_TICKS]
    return best / FRAME_TICKS * 1e6


async def one_replay(last_ids: dict[str, int], reader: str) -> float:
    """Trades/s to one ``reader`` (``embedded`` or ``feed``) from its first batch to the last trade of every
    symbol (the replay may start before it is subscribed: it counts what it gets)."""
    config = exchange_config(recording=DEMO, speed=0, wait_for_subscribers=1)
    async with open_simulated_exchange(config) as exchange:
        settings = Settings(symbols=exchange.symbols, binance_ws_url=exchange.ws_url,
                            binance_rest_url=exchange.rest_url, database_url="sqlite:///:memory:", http_port=0)
        rates: dict[str, float] = {}

        async def read(name: str, batches: AsyncIterator[list[Tick]]) -> None:
            count, started, waiting = 0, 0.0, dict(last_ids)
            async for batch in batches:
                started = started or time.perf_counter()
                count += len(batch)
                for tick in batch:
                    if waiting.get(tick.symbol) == tick.trade_id:
                        del waiting[tick.symbol]
                if not waiting:
                    break
            rates[name] = count / (time.perf_counter() - started)

        async with open_service(settings, http=True) as md:
            with trio.fail_after(120):
                if reader == "embedded":
                    async with md.subscribe(["*"], buffer=100_000) as ticks:
                        await read(reader, ticks)
                else:
                    async with open_feed(md.http_url) as feed:
                        await read(reader, feed)
        return rates[reader]


async def main(runs: int) -> None:
    from app.replay.cli import shipped_recording
    from app.replay.sources import load_recording

    path = shipped_recording(DEMO)
    assert path is not None
    recorded = [event.tick for _, event in load_recording(path).frames if event.tick is not None]
    fast = decode_microseconds_per_tick(recorded, ticks_from_api)
    general = decode_microseconds_per_tick(recorded, lambda rows: api_converter.structure(rows, list[Tick]))
    print(f"decode a {FRAME_TICKS}-tick feed frame: {fast:.2f} µs per tick (ticks_from_api), "
          f"{general:.2f} µs (api_converter)")
    last_ids = {tick.symbol: tick.trade_id for tick in recorded}
    for reader in ("embedded", "feed"):
        rates = [await one_replay(last_ids, reader) for _ in range(runs)]
        print(f"demo recording unpaced ({len(recorded)} trades) to one {reader} reader: median of {runs} "
              f"{statistics.median(rates):,.0f} trades/s (runs: {', '.join(f'{rate:,.0f}' for rate in rates)})")


if __name__ == "__main__":
    trio.run(main, int(sys.argv[1]) if len(sys.argv) > 1 else 3)
