"""Serving the Quart app with Hypercorn's Trio worker, inside the service's nursery."""

from __future__ import annotations

import logging

import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, ASGISendEvent, Scope
from quart_trio import QuartTrio


def hypercorn_config(host: str, port: int) -> Config:
    config = Config()
    config.bind = [f"{host}:{port}"]
    # Quiet by default: no access log, Hypercorn's own errors go through logging.
    config.accesslog = None
    # Hypercorn's messages go through our logging configuration rather than a handler of its own.
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = 2.0
    # Hypercorn's default backlog (100) drops connection attempts when many /ws clients reconnect at once (after
    # a restart); they then wait for TCP's retransmits, seconds each. The kernel caps it at net.core.somaxconn.
    config.backlog = 1024
    # Client messages on /ws are small JSON requests (1,024 symbols fit in ~16 KiB); larger ones close the
    # connection with 1009 instead of buffering up to Hypercorn's default 16 MiB.
    config.websocket_max_message_size = 64 * 1024
    return config


class ShieldedResponses:
    """ASGI wrapper: each HTTP response message reaches Hypercorn whole, even if the app is cancelled meanwhile.

    Hypercorn ends or recycles an HTTP/1.1 connection inside the app's last ``send``: it first tells the app
    ``http.disconnect``, which makes quart-trio cancel the task still in that ``send``, so when the request
    body was not read to its end (a 413) the socket close is cancelled half-way and the connection is left
    open with its parser paused: the client's next request on it hangs. Shielded, the close completes.
    Hypercorn already shields its socket writes, so this adds no new way to block.
    """

    def __init__(self, app: QuartTrio) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return

        async def shielded_send(message: ASGISendEvent) -> None:
            with trio.CancelScope(shield=True):
                await send(message)

        await self._app(scope, receive, shielded_send)


async def serve_http(
    app: QuartTrio,
    host: str,
    port: int,
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled; ``task_status`` reports the bound URLs (bind port 0 in tests)."""
    await serve(ShieldedResponses(app), hypercorn_config(host, port), task_status=task_status)
