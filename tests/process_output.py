"""Reading a child process's output in tests: wait for a log line, keep everything read for the failure message."""

from __future__ import annotations

import re

import trio


async def read_until(stream: trio.abc.ReceiveStream, pattern: str, seen: list[str]) -> re.Match[str]:
    """Reads lines into ``seen`` until one matches ``pattern``; what follows it in the same read is kept in
    ``seen`` too. Raises AssertionError, with the output so far, if the stream ends first."""
    buffer = b""
    while True:
        chunk = await stream.receive_some(65536)
        if not chunk:
            raise AssertionError(f"process ended before {pattern!r}; output:\n" + "".join(seen))
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for index, line in enumerate(lines):
            text = line.decode()
            seen.append(text + "\n")
            match = re.search(pattern, text)
            if match:
                seen.extend(rest.decode() + "\n" for rest in lines[index + 1 :])
                seen.append(buffer.decode())
                return match


async def read_rest(stream: trio.abc.ReceiveStream, seen: list[str]) -> None:
    """Everything until the stream ends, into ``seen``."""
    while chunk := await stream.receive_some(65536):
        seen.append(chunk.decode())
