"""``python -m bench.failover``: how long a shard is silent when its leader is killed, and what it loses.

Each try: the simulator's synthetic market (``--rate`` trades/s), two ``marketdata ingest`` processes of one
shard on the machine's Redis (a fresh key prefix), the leader killed with SIGKILL after ``--lead`` seconds.
Failover time = from the kill to the first tick batch the new leader publishes (seen by a blocking reader of
the stream in this process). Then every trade id of each symbol, from its first on the bus up to the exchange's
last trade (its 24hr ticker's lastId) at the end of the try, must be on the bus exactly once: lost and repeated
trades are counted.
Prints one line per try and the median and max; needs Redis at 127.0.0.1:6379.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import coredis
import httpx

from app.convert import ticks_from_bus
from bench.procs import PYTHON, free_port, start_child, start_simulator

log = logging.getLogger("bench")
REDIS_URL = "redis://127.0.0.1:6379/0"


async def _holder(redis: Any, key: str) -> bytes | None:
    value: bytes | None = await redis.get(key)
    return value


async def _exchange_last_ids(rest_url: str, symbols: list[str]) -> dict[str, int]:
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(f"{rest_url}/api/v3/ticker/24hr",
                                    params={"symbols": json.dumps(symbols), "type": "MINI"})
    response.raise_for_status()
    return {row["symbol"]: int(row["lastId"]) for row in response.json()}


async def _audit(redis: Any, prefix: str, rest_url: str, symbols: list[str]) -> tuple[int, int]:
    """Trades lost and repeated on the bus: every trade id of each symbol from its first one on the bus up to
    the exchange's last trade at the end of the try (waited for, up to 15 s) must be on the bus exactly once."""
    exchange_last = await _exchange_last_ids(rest_url, symbols)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:  # the leader publishes what the exchange made before the audit
        raw = await redis.hgetall(f"{prefix}:last-trade-id")
        published = {key.decode(): int(value) for key, value in raw.items()}
        if all(published.get(symbol, -1) >= last for symbol, last in exchange_last.items()):
            break
        await asyncio.sleep(0.1)
    per_symbol: dict[str, list[int]] = {}
    for item in await redis.xrange(f"{prefix}:ticks"):
        for tick in ticks_from_bus(item.field_values[b"t"]):
            per_symbol.setdefault(tick.symbol, []).append(tick.trade_id)
    lost = repeated = 0
    for symbol, last in exchange_last.items():
        ids = per_symbol.get(symbol, [])
        if not ids:
            raise RuntimeError(f"{symbol}: no trade on the bus")
        repeated += len(ids) - len(set(ids))
        lost += len(set(range(ids[0], last + 1)) - set(ids))
    return lost, repeated


async def one_try(workdir: Path, rate: int, lead_seconds: float, ttl: float) -> tuple[float, int, int]:
    prefix = f"bench-failover-{uuid.uuid4().hex[:8]}"
    simulator, info = await start_simulator(workdir, ["--synthetic", "--symbols", "4", "--rate", str(rate)])
    symbol_list = [str(symbol) for symbol in info["symbols"]]  # type: ignore[attr-defined]
    symbols = ",".join(symbol_list)
    args = [PYTHON, "-m", "app", "ingest", "--symbols", symbols, "--ws-url", str(info["ws_url"]).rsplit("/", 1)[0]
            + "/ws", "--rest-url", str(info["rest_url"]), "--bus-url", REDIS_URL, "--bus-prefix", prefix,
            "--lease-ttl", str(ttl), "--log-level", "WARNING"]
    redis = coredis.Redis.from_url(REDIS_URL)
    children = []
    async with redis:
        try:
            lease_key = f"{prefix}:lease:0/1"
            first = await start_child("ingest-a", [*args, "--port", str(free_port())], workdir)
            children.append(first)
            while await _holder(redis, lease_key) is None:  # noqa: ASYNC110  (polling another process)
                await asyncio.sleep(0.05)
            second = await start_child("ingest-b", [*args, "--port", str(free_port())], workdir)
            children.append(second)
            # The standby must be up (connected and receiving) before the leader dies.
            while "role=ingest" not in second.log_path.read_text(errors="replace"):  # noqa: ASYNC110
                await asyncio.sleep(0.1)
            await asyncio.sleep(lead_seconds)
            newest = await redis.xrevrange(f"{prefix}:ticks", count=1)
            position = newest[0].identifier if newest else b"0-0"
            first.process.kill()
            killed_at = time.monotonic()
            # The old leader may have a batch in flight at the kill: skip entries until the lease changed hands.
            while True:
                reply = await redis.xread({f"{prefix}:ticks": position}, count=1, block=10_000)
                if not reply:
                    raise RuntimeError("no tick published within 10 s of the kill")
                entry = next(iter(reply.values()))[0]
                position = entry.identifier
                holder = await _holder(redis, lease_key)
                if holder is not None and not holder.decode().endswith(f"-{first.pid}") and \
                        f"-{first.pid}:" not in holder.decode():
                    break
            failover = time.monotonic() - killed_at
            lost, repeated = await _audit(redis, prefix, str(info["rest_url"]), symbol_list)
            return failover, lost, repeated
        finally:
            for child in children:
                await child.stop()
            await simulator.stop()
            stale = [key async for key in redis.scan_iter(match=f"{prefix}:*")]
            if stale:
                await redis.delete(stale)


async def run(tries: int, rate: int, lead_seconds: float, ttl: float) -> int:
    with tempfile.TemporaryDirectory(prefix="bench-failover-") as directory:
        results = []
        for number in range(1, tries + 1):
            failover, lost, repeated = await one_try(Path(directory), rate, lead_seconds, ttl)
            results.append(failover)
            print(f"try {number}/{tries}: failover {failover:.2f} s (lease TTL {ttl:g} s), trades lost {lost}, "
                  f"repeated {repeated}", file=sys.stderr, flush=True)
        print(f"failover at {rate} trades/s, TTL {ttl:g} s: median {statistics.median(results):.2f} s, "
              f"max {max(results):.2f} s over {tries} tries")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.failover", description=__doc__)
    parser.add_argument("--tries", type=int, default=5)
    parser.add_argument("--rate", type=int, default=1000, help="trades per second of the synthetic market")
    parser.add_argument("--lead", type=float, default=3.0, help="seconds the first leader publishes")
    parser.add_argument("--ttl", type=float, default=3.0, help="LEASE_TTL_SECONDS")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    return asyncio.run(run(args.tries, args.rate, args.lead, args.ttl))


if __name__ == "__main__":
    sys.exit(main())
