"""HTTP edges through real Hypercorn on loopback: oversized bodies, and empty query parameters."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import httpx
import pytest
import trio
from test_web_routes import assert_error
from web_harness import running_web

# Far beyond the 64 KiB body limit, as in the report: the client is still sending when the 413 is decided.
OVERSIZED_BODY = b'{"symbol": "' + b"A" * (5 * 1024 * 1024) + b'"}'


async def _in_chunks(body: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(body), 64 * 1024):
        yield body[start : start + 64 * 1024]


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_an_oversized_body_leaves_the_keep_alive_client_working(framing: str) -> None:
    with trio.fail_after(20):
        async with running_web() as web, httpx.AsyncClient(base_url=web.base_url) as client:
            content = OVERSIZED_BODY if framing == "content-length" else _in_chunks(OVERSIZED_BODY)
            refused = await client.post("/api/symbols", content=content)
            assert_error(refused, 413, "payload_too_large")
            assert refused.headers["connection"] == "close"
            for _ in range(3):
                assert (await client.get("/api/ticks")).status_code == 200
            added = await client.post("/api/symbols", json={"symbol": "BTCUSDT"})
    assert_error(added, 409, "already_subscribed")


async def test_the_server_closes_the_connection_after_an_oversized_body() -> None:
    with trio.fail_after(20):
        async with running_web() as web:
            address = urlsplit(web.base_url)
            assert address.hostname is not None and address.port is not None
            stream = await trio.open_tcp_stream(address.hostname, address.port)
            async with stream:
                head = (f"POST /api/symbols HTTP/1.1\r\nHost: {address.netloc}\r\nContent-Type: application/json\r\n"
                        f"Content-Length: {len(OVERSIZED_BODY)}\r\n\r\n").encode()
                # The first 64 KiB only: the server must not wait for the rest before answering and closing.
                await stream.send_all(head + OVERSIZED_BODY[: 64 * 1024 + 1])
                received = b""
                while chunk := await stream.receive_some(65536):
                    received += chunk
    # The whole response arrived and then the end of the stream: closed cleanly, not reset or left hanging.
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), received
    assert b"connection: close" in head.lower().split(b"\r\n")
    assert json.loads(body)["error"]["code"] == "payload_too_large"


# (method, target, JSON body, expected status, expected error code): an empty or blank value is never taken for
# an absent one. The 200 rows are the controls: the same routes with the parameter left out.
EMPTY_PARAMETERS: list[tuple[str, str, object, int, str | None]] = [
    ("GET", "/api/candles/BTCUSDT", None, 200, None),
    ("GET", "/api/candles/BTCUSDT?interval=", None, 400, "unknown_interval"),
    ("GET", "/api/candles/BTCUSDT?interval", None, 400, "unknown_interval"),
    ("GET", "/api/candles/BTCUSDT?interval=%20", None, 400, "unknown_interval"),
    ("GET", "/api/candles/BTCUSDT?interval=1m&limit=", None, 400, "invalid_limit"),
    ("GET", "/api/candles/BTCUSDT?limit=%20", None, 400, "invalid_limit"),
    ("GET", "/api/candles/BTCUSDT?start=", None, 400, "invalid_time"),
    ("GET", "/api/candles/BTCUSDT?start=%20", None, 400, "invalid_time"),
    ("GET", "/api/candles/BTCUSDT?end=", None, 400, "invalid_time"),
    ("GET", "/api/candles/BTCUSDT?start=1723161300000&end=", None, 400, "invalid_time"),
    ("GET", "/api/candles/BTCUSDT?interval=5m&limit=1&start=1723161300000", None, 200, None),
    ("GET", "/api/candles/%20", None, 400, "invalid_symbol"),
    ("GET", "/api/candles/", None, 404, "not_found"),
    ("GET", "/api/ticks/%20", None, 400, "invalid_symbol"),
    ("GET", "/api/ticks/", None, 404, "not_found"),
    ("DELETE", "/api/symbols/%20", None, 400, "invalid_symbol"),
    ("DELETE", "/api/symbols/", None, 404, "not_found"),
    ("POST", "/api/symbols", {"symbol": ""}, 422, "invalid_symbol"),
    ("POST", "/api/symbols", {"symbol": " "}, 422, "invalid_symbol"),
    ("POST", "/api/symbols", {}, 422, "invalid_body"),
]


async def test_empty_parameters_are_errors_not_defaults_on_every_route() -> None:
    outcomes = []
    with trio.fail_after(30):
        async with running_web() as web, httpx.AsyncClient(base_url=web.base_url) as client:
            for method, target, body, _, _ in EMPTY_PARAMETERS:
                response = await client.request(method, target, json=body) if body is not None else \
                    await client.request(method, target)
                code = response.json()["error"]["code"] if response.status_code >= 400 else None
                outcomes.append((method, target, body, response.status_code, code))
    assert outcomes == EMPTY_PARAMETERS
