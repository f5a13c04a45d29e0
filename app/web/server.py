"""Serving the Quart app with Hypercorn's Trio worker, inside the service's nursery."""

from __future__ import annotations

import logging

import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from quart_trio import QuartTrio


def hypercorn_config(host: str, port: int) -> Config:
    config = Config()
    config.bind = [f"{host}:{port}"]
    # Quiet by default: no access log, Hypercorn's own errors go through logging.
    config.accesslog = None
    # Hypercorn's messages go through our logging configuration rather than a handler of its own.
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = 2.0
    # Client messages on /ws are small JSON requests (1,024 symbols fit in ~16 KiB); larger ones close the
    # connection with 1009 instead of buffering up to Hypercorn's default 16 MiB.
    config.websocket_max_message_size = 64 * 1024
    return config


async def serve_http(
    app: QuartTrio,
    host: str,
    port: int,
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled; ``task_status`` reports the bound URLs (bind port 0 in tests)."""
    await serve(app, hypercorn_config(host, port), task_status=task_status)
