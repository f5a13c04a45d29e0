"""``python -m bench.failover``: how long a shard is silent when its leader is killed, and what it loses.

Each try: the simulator's synthetic market (``--rate`` trades/s), two ``marketdata ingest`` processes of one
shard on the machine's Redis (a fresh key prefix), the leader killed with SIGKILL after ``--lead`` seconds.
Failover time = from the kill to the first tick batch the new leader publishes (seen by a blocking reader of
the stream in this process); lost and repeated trades are counted over the whole stream afterwards.
Prints one line per try and the median and max; needs Redis at 127.0.0.1:6379.
"""

from __future__ import annotations

import argparse
import asyncio
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

from app.convert import ticks_from_bus
from bench.procs import PYTHON, free_port, start_child, start_simulator

log = logging.getLogger("bench")
REDIS_URL = "redis://127.0.0.1:6379/0"


async def _holder(redis: Any, key: str) -> bytes | None:
    value: bytes | None = await redis.get(key)
    return value


async def one_try(workdir: Path, rate: int, lead_seconds: float, ttl: float) -> tuple[float, int, int]:
    prefix = f"bench-failover-{uuid.uuid4().hex[:8]}"
    simulator, info = await start_simulator(workdir, ["--synthetic", "--symbols", "4", "--rate", str(rate)])
    symbols = ",".join(str(symbol) for symbol in info["symbols"])  # type: ignore[attr-defined]
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
            await asyncio.sleep(1.0)
            entries = await redis.xrange(f"{prefix}:ticks")
            per_symbol: dict[str, list[int]] = {}
            for item in entries:
                for tick in ticks_from_bus(item.field_values[b"t"]):
                    per_symbol.setdefault(tick.symbol, []).append(tick.trade_id)
            lost = sum(ids[-1] - ids[0] + 1 - len(set(ids)) for ids in per_symbol.values())
            repeated = sum(len(ids) - len(set(ids)) for ids in per_symbol.values())
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
