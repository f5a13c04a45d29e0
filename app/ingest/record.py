"""The ``record`` command: frames from a Binance-compatible WebSocket, exactly as received, to a recording
(``app/recording.py``). Its sub-parser and its handler live here together."""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import attrs
import trio

from app.ingest import urls
from app.ingest.stream_socket import HandshakeFailed, SocketClosed, open_stream_socket
from app.recording import RecordedFrame, RecordingHeader, RecordingWriter, iso_now
from app.settings import configure_logging

log = logging.getLogger(__name__)

DEFAULT_RECORD_URL = "wss://stream.binance.com:9443"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
# Frames are handed to the writer thread in batches of up to this many.
_WRITE_BATCH = 1000
_RECORD_BUFFER = 100_000


def add_record_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "record",
        help="record raw frames from a Binance-compatible WebSocket",
        description="Record @trade frames exactly as received, with receive times, to a zstd JSON Lines file.",
    )
    parser.add_argument("--url", default=DEFAULT_RECORD_URL,
                        help="WebSocket base URL (the symbols' trade streams are added) or a URL naming its streams")
    parser.add_argument("--symbols", required=True, help="comma-separated, e.g. BTCUSDT,ETHUSDT")
    parser.add_argument("--out", required=True, help="output file (.rec.zst)")
    parser.add_argument("--duration", type=float, default=None, help="seconds to record (default: until ^C)")
    parser.add_argument("--note", default="", help="free text stored in the header")
    parser.add_argument("--log-level", type=str.upper, choices=LOG_LEVELS, default="INFO")
    parser.set_defaults(func=record_command)


def record_command(args: argparse.Namespace) -> int:
    """``marketdata record``: runs the recording to its end; the exit code says how it went."""
    # Whoever configured logging already (a test, an embedding program) keeps its choice.
    if not logging.getLogger().handlers:
        configure_logging(args.log_level)
    symbols = tuple(symbol.strip().upper() for symbol in args.symbols.split(",") if symbol.strip())
    if not symbols:
        log.error("no symbols given")
        return 2
    options = RecordOptions(
        url=args.url, symbols=symbols, out=Path(args.out), duration=args.duration, note=args.note or ""
    )
    try:
        frames = trio.run(record, options)
    except KeyboardInterrupt:
        log.info("recording interrupted; file closed")
        return 0
    except (OSError, HandshakeFailed) as error:
        log.error("recording failed: %s", error)
        return 1
    except BaseExceptionGroup as group:
        failures, others = group.split((OSError, HandshakeFailed))
        if others is not None or failures is None:
            raise
        log.error("recording failed: %s", failures.exceptions[0])
        return 1
    log.info("recorded frames=%d", frames)
    return 0


def record_url(url: str, symbols: Sequence[str]) -> str:
    """The URL to record from: one that names its streams (``/ws/<stream>``, ``/stream?streams=…``) as given;
    any other endpoint URL becomes the combined stream of the symbols' trade streams."""
    parts = urlsplit(url)
    if parts.path.startswith("/ws/") or "streams" in dict(parse_qsl(parts.query)):
        return url
    return urls.combined_stream_url(url, [urls.trade_stream(symbol) for symbol in symbols])


@attrs.frozen(slots=True)
class RecordOptions:
    url: str
    symbols: tuple[str, ...]
    out: Path
    duration: float | None = None
    progress_interval: float = 5.0
    note: str = ""


async def record(options: RecordOptions, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> int:
    """Record frames from ``options.url`` until ``duration`` elapses, the server closes, or cancellation.

    Reports the connected URL through ``task_status`` once the socket is open; returns the frame count.
    """
    url = record_url(options.url, options.symbols)
    header = RecordingHeader(
        source=url, symbols=options.symbols, started_at=iso_now(), synthetic=False, note=options.note
    )
    writer = await trio.to_thread.run_sync(RecordingWriter, options.out, header)
    frames_send, frames_recv = trio.open_memory_channel[RecordedFrame](_RECORD_BUFFER)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_write_frames, writer, frames_recv)
            with trio.move_on_after(options.duration if options.duration is not None else float("inf")):
                await _receive_frames(url, frames_send, options.progress_interval, task_status)
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(writer.close)
    log.info("recording finished frames=%d out=%s", writer.frames_written, options.out)
    return writer.frames_written


async def _receive_frames(
    url: str,
    frames_send: trio.MemorySendChannel[RecordedFrame],
    progress_interval: float,
    task_status: trio.TaskStatus[str],
) -> None:
    async with frames_send, open_stream_socket(url) as socket:
        log.info("recording from url=%s", url)
        task_status.started(url)
        received = 0
        next_progress = trio.current_time() + progress_interval
        while True:
            try:
                messages = await socket.receive_batch()
            except SocketClosed as closed:
                log.info("server closed the connection reason=%s frames=%d", closed, received)
                return
            # Stamp first: the receive time must not include our own processing. Frames of one read share it.
            recv_ns = time.time_ns()
            for message in messages:
                try:
                    # Exactly as received: text frames are checked as UTF-8 by the socket, so this is lossless.
                    frame = message.decode("utf-8")
                except UnicodeDecodeError as error:
                    # Only a binary frame can get here; a recording holds text frames.
                    log.warning("binary frame skipped: not UTF-8 text error=%s bytes=%d", error.reason, len(message))
                    continue
                await frames_send.send(RecordedFrame(recv_ns=recv_ns, frame=frame))
                received += 1
            if trio.current_time() >= next_progress:
                log.info("recording progress frames=%d", received)
                next_progress = trio.current_time() + progress_interval


async def _write_frames(
    writer: RecordingWriter, frames_recv: trio.MemoryReceiveChannel[RecordedFrame]
) -> None:
    async with frames_recv:
        async for first in frames_recv:
            batch = [first]
            while len(batch) < _WRITE_BATCH:
                try:
                    batch.append(frames_recv.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
            await trio.to_thread.run_sync(writer.write_many, batch)
