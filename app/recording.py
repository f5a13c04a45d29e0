"""The recording format: raw WebSocket frames with their receive times, read and written. Used by the
``record`` command (``app/ingest/record.py``), the simulator's replay and the converters in ``app/replay``.

Format (version 1)
------------------
A recording is a JSON Lines text file (UTF-8, one JSON object per line), compressed with zstd (written by
this module) or gzip, or left plain; readers detect which by the file's magic bytes.

* Line 1 is a header object::

    {"format": "marketdata-recording", "version": 1, "source": "wss://stream.binance.com:9443/stream?...",
     "symbols": ["BTCUSDT", "ETHUSDT"], "started_at": "2024-08-08T23:54:15.342+00:00",
     "synthetic": false, "note": "free text"}

  ``source`` is the URL the frames came from, ``symbols`` the upper-case symbols asked for, ``started_at``
  an ISO-8601 UTC time, ``synthetic`` true when the frames were generated rather than received from an
  exchange. Readers ignore keys they do not know.
* Every further line is one received frame::

    {"recv_ns": 1723161255343000000, "frame": "{\\"stream\\":\\"btcusdt@trade\\",\\"data\\":{...}}"}

  ``recv_ns`` is the receive time in integer nanoseconds since the Unix epoch (UTC); ``frame`` is the text
  frame exactly as received (combined ``{"stream", "data"}`` frames or raw event objects), so replaying it
  reproduces the original bytes. Lines are in receive order.

Writing a recording from your own tool needs nothing but ``json`` and a compressor: write the header line,
then one line per frame.
"""

from __future__ import annotations

import gzip
import io
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import IO, Self, cast

import attrs
import orjson
import zstandard

FORMAT_NAME = "marketdata-recording"
FORMAT_VERSION = 1
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_GZIP_MAGIC = b"\x1f\x8b"


class RecordingError(ValueError):
    """A file that is not a valid recording."""


@attrs.frozen(slots=True)
class RecordingHeader:
    source: str
    symbols: tuple[str, ...]
    started_at: str
    synthetic: bool = False
    note: str = ""

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "format": FORMAT_NAME,
                "version": FORMAT_VERSION,
                "source": self.source,
                "symbols": list(self.symbols),
                "started_at": self.started_at,
                "synthetic": self.synthetic,
                "note": self.note,
            }
        )

    @classmethod
    def from_json(cls, line: bytes) -> RecordingHeader:
        try:
            header = orjson.loads(line)
        except orjson.JSONDecodeError as error:
            raise RecordingError(f"header line is not JSON: {error}") from None
        if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
            raise RecordingError("first line is not a marketdata-recording header")
        if header.get("version") != FORMAT_VERSION:
            raise RecordingError(f"unsupported recording version {header.get('version')!r}")
        symbols = header.get("symbols", [])
        if not isinstance(symbols, list) or not all(isinstance(symbol, str) for symbol in symbols):
            raise RecordingError("header 'symbols' must be a list of strings")
        return cls(
            source=str(header.get("source", "")),
            symbols=tuple(symbols),
            started_at=str(header.get("started_at", "")),
            synthetic=bool(header.get("synthetic", False)),
            note=str(header.get("note", "")),
        )


@attrs.frozen(slots=True)
class RecordedFrame:
    recv_ns: int
    frame: str

    def to_json(self) -> bytes:
        return orjson.dumps({"recv_ns": self.recv_ns, "frame": self.frame})

    @classmethod
    def from_json(cls, line: bytes, line_number: int) -> RecordedFrame:
        try:
            record = orjson.loads(line)
            recv_ns, frame = record["recv_ns"], record["frame"]
        except (orjson.JSONDecodeError, KeyError, TypeError) as error:
            raise RecordingError(f"line {line_number}: not a frame record ({error})") from None
        if type(recv_ns) is not int or not isinstance(frame, str):
            raise RecordingError(f"line {line_number}: recv_ns must be an integer and frame a string")
        return cls(recv_ns=recv_ns, frame=frame)


def iso_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def iso_from_ns(epoch_ns: int) -> str:
    seconds, nanos = divmod(epoch_ns, 1_000_000_000)
    moment = datetime.fromtimestamp(seconds, UTC).replace(microsecond=nanos // 1000)
    return moment.isoformat(timespec="milliseconds")


def _open_binary_for_read(path: Path) -> IO[bytes]:
    raw = path.open("rb")
    magic = raw.read(4)
    raw.seek(0)
    if magic.startswith(_ZSTD_MAGIC):
        # read_across_frames: files concatenated by appending stay readable.
        reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True, closefd=True)
        # The zstd reader has no readline: buffer it.
        return cast(IO[bytes], io.BufferedReader(cast(io.RawIOBase, reader)))
    if magic.startswith(_GZIP_MAGIC):
        raw.close()
        return cast(IO[bytes], gzip.open(path, "rb"))
    return raw


class RecordingReader:
    """Reads a recording: ``header`` at once, then frames lazily (blocking file I/O: call from a thread)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._lines = _open_binary_for_read(self.path)
        first = self._lines.readline()
        if not first.strip():
            self.close()
            raise RecordingError(f"{self.path}: empty recording")
        try:
            self.header = RecordingHeader.from_json(first)
        except RecordingError:
            self.close()
            raise

    def frames(self) -> Iterator[RecordedFrame]:
        for line_number, line in enumerate(self._lines, start=2):
            if line.strip():
                yield RecordedFrame.from_json(line, line_number)

    def close(self) -> None:
        self._lines.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_recording(path: Path | str) -> tuple[RecordingHeader, list[RecordedFrame]]:
    """The whole recording in memory (blocking; shipped recordings are a few MB at most)."""
    with RecordingReader(path) as reader:
        return reader.header, list(reader.frames())


class RecordingWriter:
    """Writes a zstd-compressed recording (blocking file I/O: call from a thread)."""

    def __init__(self, path: Path | str, header: RecordingHeader, *, level: int = 10) -> None:
        self.path = Path(path)
        self._file = self.path.open("wb")
        self._zstd = zstandard.ZstdCompressor(level=level).stream_writer(self._file, closefd=True)
        self._zstd.write(header.to_json() + b"\n")
        self.frames_written = 0

    def write(self, frame: RecordedFrame) -> None:
        self._zstd.write(frame.to_json() + b"\n")
        self.frames_written += 1

    def write_many(self, frames: Iterable[RecordedFrame]) -> None:
        for frame in frames:
            self.write(frame)

    def close(self) -> None:
        self._zstd.close()  # type: ignore[no-untyped-call]

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def write_recording(path: Path | str, header: RecordingHeader, frames: Iterable[RecordedFrame]) -> int:
    with RecordingWriter(path, header) as writer:
        writer.write_many(frames)
        return writer.frames_written
