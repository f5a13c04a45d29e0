"""A WebSocket client connection that never leaks its TCP socket.

trio-websocket 0.12's ``open_websocket_url`` leaves the client's socket open (until garbage collection, with a
ResourceWarning) when the *server* closes or resets the connection first, which the simulator does on purpose.
This wrapper closes it on exit; it relies on the connection's ``_stream`` attribute.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio
from trio_websocket import WebSocketConnection, open_websocket_url


@asynccontextmanager
async def open_websocket_client(url: str) -> AsyncIterator[WebSocketConnection]:
    connection: WebSocketConnection | None = None
    try:
        async with open_websocket_url(url) as connection:
            yield connection
    finally:
        if connection is not None:
            await trio.aclose_forcefully(connection._stream)
