"""/openapi.json matches the app: the same routes and methods, and real responses fit its schemas."""

from __future__ import annotations

import re
from typing import Any

import httpx
import trio
from web_harness import T0_MS, check_schema, make_ticks, running_web

from app.web.app import create_app

IGNORED_METHODS = {"HEAD", "OPTIONS"}


async def fetch_document(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/openapi.json")
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    document: dict[str, Any] = response.json()
    return document


async def test_the_document_lists_exactly_the_apps_routes_and_methods() -> None:
    with trio.fail_after(20):
        async with running_web() as web, httpx.AsyncClient(base_url=web.base_url) as client:
            document = await fetch_document(client)
            app = create_app(web.state)
    routes: dict[str, set[str]] = {}
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or rule.websocket:
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        routes.setdefault(path, set()).update(set(rule.methods or ()) - IGNORED_METHODS)
    documented = {path: {method.upper() for method in item} for path, item in document["paths"].items()}
    assert documented == routes
    assert document["openapi"] == "3.1.0"
    operation_ids = [op["operationId"] for item in document["paths"].values() for op in item.values()]
    assert len(operation_ids) == len(set(operation_ids))
    # Every path parameter is declared.
    for path, item in document["paths"].items():
        for operation in item.values():
            declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
            assert declared == set(re.findall(r"{(\w+)}", path)), path


# (method, path, body) covering every documented operation and every documented error status.
REQUESTS: list[tuple[str, str, bytes | None]] = [
    ("GET", "/api/ticks", None),
    ("GET", "/api/ticks/BTCUSDT", None),
    ("GET", "/api/ticks/SOLUSDT", None),
    ("GET", "/api/ticks/ETHUSDT", None),
    ("GET", "/api/ticks/B-T", None),
    ("GET", "/api/candles/BTCUSDT", None),
    ("GET", f"/api/candles/BTCUSDT?interval=5m&limit=2&start={T0_MS}", None),
    ("GET", "/api/candles/BTCUSDT?interval=2m", None),
    ("GET", "/api/candles/BTCUSDT?start=2024-08-09T00:00:00Z&end=2024-08-08T00:00:00Z", None),
    ("GET", "/api/candles/SOLUSDT", None),
    ("GET", "/api/symbols", None),
    ("POST", "/api/symbols", b"{"),
    ("POST", "/api/symbols", b'{"symbol": "BTCUSDT"}'),
    ("POST", "/api/symbols", b'{"symbol": 1}'),
    ("POST", "/api/symbols", b'{"symbol": "SOLUSDT"}'),  # no ingestion running here: 503
    ("DELETE", "/api/symbols/SOLUSDT", None),
    ("DELETE", "/api/symbols/S-L", None),
    ("DELETE", "/api/symbols/BTCUSDT", None),  # no ingestion running here: 503
    ("GET", "/health", None),
    ("GET", "/metrics", None),
    ("GET", "/openapi.json", None),
    ("GET", "/", None),
    ("GET", "/api/config", None),
    # A query parameter the operation does not take: 400 on every one.
    ("GET", "/api/ticks?symbol=BTCUSDT", None),
    ("GET", "/api/symbols?symbol=BTCUSDT", None),
    ("POST", "/api/symbols?symbol=SOLUSDT", b'{"symbol": "SOLUSDT"}'),
    ("GET", "/health?verbose=1", None),
    ("GET", "/metrics?name=x", None),
    ("GET", "/openapi.json?format=yaml", None),
    ("GET", "/?symbol=BTCUSDT&symbol=ETHUSDT", None),
    ("GET", "/api/config?x=1", None),
]


async def test_real_responses_fit_the_documented_schemas() -> None:
    with trio.fail_after(30):
        async with running_web() as web, httpx.AsyncClient(base_url=web.base_url) as client:
            await web.publish_and_settle(make_ticks("BTCUSDT", 1, 200, step_ms=1000))
            document = await fetch_document(client)
            seen: set[tuple[str, str, str]] = set()
            for method, url, body in REQUESTS:
                response = await client.request(method, url, content=body)
                template = next(path for path in document["paths"]
                                if re.fullmatch(re.sub(r"{\w+}", r"[^/]+", path), url.split("?")[0]))
                operation = document["paths"][template][method.lower()]
                status = str(response.status_code)
                assert status in operation["responses"], (method, url, status, response.text)
                content = operation["responses"][status]["content"]
                if "application/json" in content:
                    check_schema(response.json(), content["application/json"]["schema"], document,
                                 f"{method} {url} {status}")
                else:
                    assert response.headers["content-type"].startswith(next(iter(content))), (url, content)
                seen.add((template, method.lower(), status))
    documented = {(path, method, status) for path, item in document["paths"].items()
                  for method, operation in item.items() for status in operation["responses"]}
    # Every documented response was produced, except those that need a running exchange connection (tested
    # end to end in test_web_e2e.py), a misbehaving exchange (502), an unreadable database
    # (test_store_trouble.py), an ADMIN_TOKEN or a non-loopback host (test_web_security.py) or a body over
    # the limit (test_web_edges.py).
    assert documented - seen == {
        ("/api/candles/{symbol}", "get", "503"),
        ("/api/symbols", "post", "201"), ("/api/symbols", "post", "502"),
        ("/api/symbols/{symbol}", "delete", "200"), ("/api/symbols/{symbol}", "delete", "502"),
        ("/health", "get", "200"),
        ("/api/symbols", "post", "401"), ("/api/symbols", "post", "403"), ("/api/symbols", "post", "413"),
        ("/api/symbols/{symbol}", "delete", "401"), ("/api/symbols/{symbol}", "delete", "403"),
    }
