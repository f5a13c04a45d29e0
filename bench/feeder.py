"""A capacity feeder: the simulator's trades, pre-rendered, written to a WebSocket at socket speed.

The simulator generates and frames each trade live in Python, which caps what it can send on this machine
(the bench measures that cap as its own row). To measure the service's and the baseline's capacity, not the
simulator's, this feeder pre-renders the same market once (the shipped recording looped with trade ids and
times shifted forward as the simulator's ``--loop`` does, or the simulator's seeded synthetic market), frames
it as Binance's combined stream, and writes it to every connection as fast as TCP takes it.

It speaks just enough of the protocol for a Binance client: the HTTP upgrade for ``/stream?streams=...``,
pong for ping, ``{"result": null, "id": N}`` for live methods, and close. Trade ids stay consecutive per
symbol so the client's gap and duplicate checks see a healthy stream. When a connection has been sent every
pre-rendered frame the feeder just stays quiet.

Run: ``python -m bench.feeder --source recording --frames 1000000``; it prints ``{"ws_url": ...,
"symbols": [...]}`` on stdout once listening.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import os
import signal
import struct
import sys
import time
from collections.abc import Iterator, Sequence
from decimal import Decimal
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from app.model import Tick
from app.replay.sources import SyntheticMarket, load_recording

log = logging.getLogger("bench.feeder")

DEMO_RECORDING = Path(__file__).absolute().parent.parent / "app" / "data" / "demo-binance-2024-08-08.rec.zst"
_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_CHUNK = 256 * 1024


def recording_ticks(path: Path) -> list[Tick]:
    recording = load_recording(path)
    return [event.tick for _, event in recording.frames if event.tick is not None]


def synthetic_ticks(symbols: int, count: int, seed: int = 7) -> list[Tick]:
    market = SyntheticMarket(symbols=symbols, rate=10_000.0, seed=seed, start_ms=int(time.time() * 1000))
    ticks: list[Tick] = []
    for scheduled in market:
        tick = scheduled.event.tick
        assert tick is not None
        ticks.append(tick)
        if len(ticks) >= count:
            break
    return ticks


def looped(base: Sequence[Tick], count: int) -> Iterator[tuple[str, int, int, int, Decimal, Decimal, bool]]:
    """``count`` trades: ``base`` again and again, ids shifted by each symbol's id span, times by its length."""
    low: dict[str, int] = {}
    high: dict[str, int] = {}
    for tick in base:
        low[tick.symbol] = min(low.get(tick.symbol, tick.trade_id), tick.trade_id)
        high[tick.symbol] = max(high.get(tick.symbol, tick.trade_id), tick.trade_id)
    spans = {symbol: high[symbol] - low[symbol] + 1 for symbol in low}
    pass_ms = base[-1].trade_time_ms - base[0].trade_time_ms + 1
    emitted = 0
    number = 0
    while True:
        for tick in base:
            if emitted >= count:
                return
            shift_ms = number * pass_ms
            yield (tick.symbol, tick.trade_id + number * spans[tick.symbol], tick.trade_time_ms + shift_ms,
                   tick.event_time_ms + shift_ms, tick.price, tick.quantity, tick.is_buyer_maker)
            emitted += 1
        number += 1


def ws_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """A server-to-client (unmasked) WebSocket frame."""
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", 0x80 | opcode, length)
    elif length < 65_536:
        header = struct.pack("!BBH", 0x80 | opcode, 126, length)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 127, length)
    return header + payload


def render_frames(base: Sequence[Tick], count: int) -> list[tuple[str, bytes]]:
    """(stream, framed bytes) for ``count`` trades in Binance's combined ``@trade`` layout."""
    frames: list[tuple[str, bytes]] = []
    lower = {tick.symbol: tick.symbol.lower() for tick in base}
    for symbol, trade_id, trade_ms, event_ms, price, quantity, maker in looped(base, count):
        stream = f"{lower[symbol]}@trade"
        text = (
            f'{{"stream":"{stream}","data":{{"e":"trade","E":{event_ms},"s":"{symbol}","t":{trade_id},'
            f'"p":"{price:.8f}","q":"{quantity:.8f}","T":{trade_ms},"m":{"true" if maker else "false"},'
            f'"M":true}}}}'
        )
        frames.append((stream, ws_frame(text.encode())))
    return frames


class Feeder:
    """Serves the pre-rendered frames; with ``hold``, each connection waits for a ``go`` line on stdin."""

    def __init__(self, frames: list[tuple[str, bytes]], hold: bool) -> None:
        self.frames = frames
        self.hold = hold
        self._cache: dict[frozenset[str], bytes] = {}
        self.connections = 0
        self.release = asyncio.Event()

    def go(self) -> None:
        """Releases the connections waiting now; later ones wait for the next ``go``."""
        self.release.set()
        self.release = asyncio.Event()

    def stream_bytes(self, streams: frozenset[str]) -> bytes:
        data = self._cache.get(streams)
        if data is None:
            data = self._cache[streams] = b"".join(frame for stream, frame in self.frames if stream in streams)
        return data

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            writer.close()
            return
        lines = request.decode("latin-1").split("\r\n")
        target = lines[0].split(" ")[1]
        fields = (line.partition(":") for line in lines[1:])
        headers = {name.strip().lower(): value.strip() for name, _, value in fields}
        key = headers.get("sec-websocket-key", "")
        accept = base64.b64encode(hashlib.sha1(key.encode() + _WS_GUID).digest()).decode()
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            + f"Sec-WebSocket-Accept: {accept}\r\n\r\n".encode()
        )
        parts = urlsplit(target)
        streams = frozenset(
            stream for value in parse_qs(parts.query).get("streams", []) for stream in value.split("/") if stream
        )
        if parts.path.startswith("/ws/"):
            streams |= frozenset(parts.path.removeprefix("/ws/").split("/"))
        self.connections += 1
        log.info("connection streams=%d", len(streams))
        print(json.dumps({"connected": self.connections, "streams": len(streams)}), flush=True)
        subscribed = set(streams)
        has_streams = asyncio.Event()
        if subscribed:
            has_streams.set()
        control = asyncio.create_task(self._read_control(reader, writer, subscribed, has_streams))
        try:
            if self.hold:
                await self.release.wait()
            # A client that subscribes with SUBSCRIBE instead of the URL gets its streams once it has asked.
            await has_streams.wait()
            data = memoryview(self.stream_bytes(frozenset(subscribed)))
            for offset in range(0, len(data), _CHUNK):
                if control.done():
                    break
                writer.write(data[offset : offset + _CHUNK])
                await writer.drain()
            await control
        except ConnectionError:
            pass
        finally:
            control.cancel()
            writer.close()

    async def _read_control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, subscribed: set[str],
                            has_streams: asyncio.Event) -> None:
        """Client frames (masked): pong to ping, a result to a live method, stop on close."""
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                first, second = await reader.readexactly(2)
                opcode = first & 0x0F
                length = second & 0x7F
                if length == 126:
                    (length,) = struct.unpack("!H", await reader.readexactly(2))
                elif length == 127:
                    (length,) = struct.unpack("!Q", await reader.readexactly(8))
                mask = await reader.readexactly(4) if second & 0x80 else b"\x00\x00\x00\x00"
                masked = await reader.readexactly(length)
                payload = bytes(byte ^ mask[index % 4] for index, byte in enumerate(masked))
                if opcode == 0x8:
                    writer.write(ws_frame(payload[:2], 0x8))
                    return
                if opcode == 0x9:
                    writer.write(ws_frame(payload, 0xA))
                elif opcode == 0x1:
                    with contextlib.suppress(ValueError):
                        message = json.loads(payload)
                        if isinstance(message, dict) and "method" in message:
                            result: list[str] | None = None
                            if message["method"] == "SUBSCRIBE":
                                subscribed.update(message.get("params") or ())
                                if subscribed:
                                    has_streams.set()
                            elif message["method"] == "LIST_SUBSCRIPTIONS":
                                result = sorted(subscribed)
                            reply = {"result": result, "id": message.get("id")}
                            writer.write(ws_frame(json.dumps(reply).encode()))


async def serve_frames(feeder: Feeder, host: str, port: int, symbols: Sequence[str]) -> None:
    server = await asyncio.start_server(feeder.handle, host, port, limit=1 << 20)
    bound = server.sockets[0].getsockname()[1]
    print(json.dumps({"ws_url": f"ws://{host}:{bound}/ws", "symbols": list(symbols),
                      "frames": len(feeder.frames)}), flush=True)
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set_result, None)

    def on_stdin() -> None:
        chunk = os.read(sys.stdin.fileno(), 4096)
        if not chunk:
            loop.remove_reader(sys.stdin.fileno())
        elif b"go" in chunk:
            feeder.go()

    if feeder.hold:
        loop.add_reader(sys.stdin.fileno(), on_stdin)
    async with server:
        await stop


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.feeder", description=__doc__.splitlines()[0])
    parser.add_argument("--source", choices=("recording", "synthetic"), default="recording")
    parser.add_argument("--recording", type=Path, default=DEMO_RECORDING)
    parser.add_argument("--symbols", type=int, default=8, help="synthetic market: number of symbols")
    parser.add_argument("--frames", type=int, default=1_000_000)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--hold", action="store_true", help="each connection waits for a 'go' line on stdin")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    started = time.perf_counter()
    if args.source == "recording":
        base = recording_ticks(args.recording)
    else:
        base = synthetic_ticks(args.symbols, min(args.frames, 20_000))
    frames = render_frames(base, args.frames)
    symbols = list(dict.fromkeys(tick.symbol for tick in base))
    log.info("rendered frames=%d symbols=%d seconds=%.1f", len(frames), len(symbols), time.perf_counter() - started)
    asyncio.run(serve_frames(Feeder(frames, args.hold), args.host, args.port, symbols))
    return 0


if __name__ == "__main__":
    sys.exit(main())
