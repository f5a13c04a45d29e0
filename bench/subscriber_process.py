"""A process of feed subscribers for the bench's subscriber rows (asyncio + ``websockets``), one of 2-4.

``live``: ``--clients`` subscribers of ``/ws``, each to 1-3 symbols drawn (seeded) from ``--symbols``, and a tap
on the exchange (every symbol) as the latency reference in the same process. Each subscriber checks that trade
ids arrive consecutively per symbol from its first. ``idle``: ``--clients`` connections that subscribe to
nothing. Protocol on stdout/stdin (JSON lines): it prints ``{"connected": N}`` once all are up; ``start`` begins
the window; ``stop`` ends it and, once every subscriber has caught up with what the tap saw (or after
``--grace`` s), prints ``{"report": ...}`` (latencies in a file of float64 ms, ``--latency-file``); ``check``
prints ``{"open": N}`` (connections not closed by the server). EOF on stdin ends it.

Run: ``python -m bench.subscriber_process live --feed-url ws://... --tap-url ws://... --symbols A,B --clients 250``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import sys
import time
from array import array
from collections.abc import Sequence
from pathlib import Path

import attrs
import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

CONNECT_GROUP = 20
CONNECT_ATTEMPTS = 5


def raise_open_file_limit(needed: int) -> int:
    """Raises this process's soft RLIMIT_NOFILE to the hard limit (children inherit it); returns the soft limit.
    10,000 connections need more descriptors than the usual default of 1,024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    if soft < needed:
        print(f"open-file limit {soft} is below the {needed} needed", file=sys.stderr)
    return soft


def _emit(message: dict[str, object]) -> None:
    print(json.dumps(message), flush=True)


@attrs.define
class Window:
    """What the window is recording; tap times are perf_counter_ns."""

    recording: bool = False
    tap_times: dict[tuple[str, int], int] = attrs.field(factory=dict)
    tap_last: dict[str, int] = attrs.field(factory=dict)
    latencies_ms: array[float] = attrs.field(factory=lambda: array("d"))


@attrs.define
class Client:
    symbols: tuple[str, ...]
    first_id: dict[str, int] = attrs.field(factory=dict)
    last_id: dict[str, int] = attrs.field(factory=dict)
    received: int = 0
    in_window: int = 0
    gaps: int = 0  # trade ids skipped
    repeats: int = 0  # trade ids at or below one already received
    closed: str | None = None


async def _tap(url: str, window: Window) -> None:
    async with connect(url, max_size=None, ping_interval=None, compression=None, open_timeout=30) as websocket:
        while True:
            frame = await websocket.recv(decode=False)
            now = time.perf_counter_ns()
            data = orjson.loads(frame).get("data", {})
            if data.get("e") == "trade":
                symbol, trade_id = data["s"], data["t"]
                window.tap_last[symbol] = trade_id
                if window.recording:
                    window.tap_times[(symbol, trade_id)] = now


async def _subscribe(feed_url: str, symbols: Sequence[str] | None, retries: list[str]) -> ClientConnection:
    for attempt in range(CONNECT_ATTEMPTS):
        try:
            websocket = await connect(feed_url, max_size=None, ping_interval=None, compression=None, open_timeout=60)
            break
        except (OSError, TimeoutError, InvalidHandshake) as error:
            # A server starved of CPU may drop a handshake: counted and reported, not data lost.
            retries.append(repr(error))
            if attempt == CONNECT_ATTEMPTS - 1:
                raise
            await asyncio.sleep(0.2 * (attempt + 1))
    if symbols is not None:
        await websocket.send(orjson.dumps({"op": "subscribe", "channel": "ticks", "symbols": list(symbols)}).decode())
        reply = orjson.loads(await asyncio.wait_for(websocket.recv(decode=False), 60))
        if reply.get("op") != "subscribed":
            raise RuntimeError(f"subscription refused: {reply}")
    return websocket


async def _read(websocket: ClientConnection, client: Client, window: Window) -> None:
    first_id, last_id = client.first_id, client.last_id
    try:
        while True:
            frame = await websocket.recv(decode=False)
            now = time.perf_counter_ns()
            message = orjson.loads(frame)
            for tick in message.get("data", ()):
                symbol, trade_id = tick["symbol"], tick["trade_id"]
                previous = last_id.get(symbol)
                if previous is None:
                    first_id[symbol] = trade_id
                elif trade_id <= previous:
                    client.repeats += 1
                    continue
                elif trade_id != previous + 1:
                    client.gaps += trade_id - previous - 1
                last_id[symbol] = trade_id
                client.received += 1
                if window.recording:
                    client.in_window += 1
                    tapped = window.tap_times.get((symbol, trade_id))
                    if tapped is not None:
                        window.latencies_ms.append((now - tapped) / 1e6)
    except ConnectionClosed as error:
        received = error.rcvd
        client.closed = f"{received.code} {received.reason}" if received is not None else "no close frame"


def _caught_up(clients: Sequence[Client], target: dict[str, int]) -> bool:
    return all(client.closed or all(client.last_id.get(symbol, -1) >= target.get(symbol, -1)
                                    for symbol in client.symbols) for client in clients)


def _report(clients: Sequence[Client], target: dict[str, int], seconds: float) -> dict[str, object]:
    missing_per_client = []
    for client in clients:
        missing = client.gaps
        for symbol in client.symbols:
            # Trades the exchange sent up to the end of the window that never reached this client at the end.
            if symbol in client.last_id:
                missing += max(0, target.get(symbol, -1) - client.last_id[symbol])
            elif symbol in target:
                missing += 1  # none at all although the symbol traded: at least one lost
        missing_per_client.append(missing)
    return {
        "clients": len(clients),
        "window_s": seconds,
        "delivered_per_s": [client.in_window / seconds for client in clients],
        "received": [client.received for client in clients],
        "missing": missing_per_client,
        "repeats": sum(client.repeats for client in clients),
        "closed": [client.closed for client in clients if client.closed],
    }


async def _commands() -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def run(args: argparse.Namespace) -> None:
    raise_open_file_limit(args.clients + 64)
    window = Window()
    symbols = args.symbols.split(",") if args.symbols else []
    chooser = random.Random(args.seed)
    clients = [Client(tuple(chooser.sample(symbols, chooser.randint(1, min(3, len(symbols))))))
               if args.mode == "live" else Client(()) for _ in range(args.clients)]
    tasks: list[asyncio.Task[None]] = []
    retries: list[str] = []
    connections: list[ClientConnection] = []
    if args.mode == "live":
        tasks.append(asyncio.create_task(_tap(args.tap_url, window)))
    # Small groups: a burst of handshakes is itself a load the server must absorb.
    for start in range(0, len(clients), CONNECT_GROUP):
        group = clients[start:start + CONNECT_GROUP]
        opened = await asyncio.gather(*(
            _subscribe(args.feed_url, client.symbols if args.mode == "live" else None, retries) for client in group))
        for websocket, client in zip(opened, group, strict=True):
            connections.append(websocket)
            tasks.append(asyncio.create_task(_read(websocket, client, window)))
    _emit({"connected": len(connections), "connect_retries": len(retries), "first_retry": retries[:1]})
    commands = await _commands()
    started = stopped = time.perf_counter()
    while line := (await commands.readline()).strip():
        if line == b"start":
            window.recording, started = True, time.perf_counter()
        elif line == b"stop":
            window.recording, stopped = False, time.perf_counter()
            target = dict(window.tap_last)
            deadline = time.monotonic() + args.grace
            # A condition over every client's counters: polled, rather than checked on every frame.
            while not _caught_up(clients, target) and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            await asyncio.to_thread(Path(args.latency_file).write_bytes, window.latencies_ms.tobytes())
            _emit({"report": _report(clients, target, stopped - started)})
        elif line == b"check":
            _emit({"open": sum(1 for connection in connections if connection.close_code is None)})
    for task in tasks:
        task.cancel()
    for connection in connections:
        connection.transport.abort()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.subscriber_process", description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("live", "idle"))
    parser.add_argument("--feed-url", required=True)
    parser.add_argument("--tap-url", default="")
    parser.add_argument("--symbols", default="")
    parser.add_argument("--clients", type=int, required=True)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--grace", type=float, default=10.0)
    parser.add_argument("--latency-file", default="/dev/null")
    args = parser.parse_args(argv)
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
