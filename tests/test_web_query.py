"""Query parameters over real HTTP: every route refuses the ones it does not take and repeated ones with a 400
in the one error shape, naming the parameter; the service's app, its /ws upgrade and a role process's app."""

from __future__ import annotations

import json
import re

import httpx
import pytest
import trio
from trio_websocket import ConnectionRejected, open_websocket_url
from web_harness import T0_MS, running_web

from app.web.app import create_app
from app.web.errors import ApiError
from app.web.query import check_query
from app.web.role_app import create_role_app
from app.web.server import serve_http

# (method, target, JSON body, expected status, expected error code). The 2xx rows are the controls: the same
# routes with the parameters they take, or none.
QUERIES: list[tuple[str, str, object, int, str | None]] = [
    ("GET", "/api/ticks", None, 200, None),
    ("GET", "/api/ticks?symbol=BTCUSDT", None, 400, "unknown_parameter"),
    ("GET", "/api/ticks/BTCUSDT?interval=1m", None, 400, "unknown_parameter"),
    ("GET", f"/api/candles/BTCUSDT?interval=5m&limit=2&start={T0_MS}&end={T0_MS + 600_000}", None, 200, None),
    ("GET", "/api/candles/BTCUSDT?lmit=5", None, 400, "unknown_parameter"),
    ("GET", "/api/candles/BTCUSDT?Interval=1m", None, 400, "unknown_parameter"),
    ("GET", "/api/candles/BTCUSDT?=1m", None, 400, "unknown_parameter"),
    ("GET", "/api/candles/BTCUSDT?interval=1m&symbol=ETHUSDT", None, 400, "unknown_parameter"),
    ("GET", "/api/candles/BTCUSDT?limit=1&limit=2", None, 400, "repeated_parameter"),
    ("GET", "/api/candles/BTCUSDT?limit=1&limit=1", None, 400, "repeated_parameter"),
    ("GET", "/api/candles/BTCUSDT?interval=1m&interval=5m", None, 400, "repeated_parameter"),
    ("GET", "/api/candles/BTCUSDT?start=&start=1", None, 400, "repeated_parameter"),
    ("GET", "/api/symbols", None, 200, None),
    ("GET", "/api/symbols?symbol=BTCUSDT", None, 400, "unknown_parameter"),
    ("POST", "/api/symbols?symbol=SOLUSDT", {"symbol": "SOLUSDT"}, 400, "unknown_parameter"),
    ("DELETE", "/api/symbols/SOLUSDT?force=1", None, 400, "unknown_parameter"),
    ("GET", "/health?verbose=1", None, 400, "unknown_parameter"),
    ("GET", "/metrics", None, 200, None),
    ("GET", "/metrics?name=marketdata_healthy", None, 400, "unknown_parameter"),
    ("GET", "/openapi.json?format=yaml", None, 400, "unknown_parameter"),
    ("GET", "/?symbol=ETHUSDT&interval=5m", None, 200, None),
    ("GET", "/?symbol=BTCUSDT&symbol=ETHUSDT", None, 400, "repeated_parameter"),
    ("GET", "/?theme=dark", None, 400, "unknown_parameter"),
    ("GET", "/api/config?x=1", None, 400, "unknown_parameter"),
    ("GET", "/static/dashboard.js", None, 200, None),
    ("GET", "/static/dashboard.js?v=2", None, 200, None),  # a cache buster
    ("OPTIONS", "/api/candles/BTCUSDT?interval=1m&limit=5", None, 200, None),
    ("OPTIONS", "/api/candles/BTCUSDT?lmit=5", None, 400, "unknown_parameter"),
    ("HEAD", "/api/candles/BTCUSDT?interval=1m", None, 200, None),
    # No route: the 404 wins over the query.
    ("GET", "/nope?x=1", None, 404, "not_found"),
]


async def test_unknown_and_repeated_parameters_are_refused_on_every_route() -> None:
    outcomes = []
    with trio.fail_after(30):
        async with running_web() as web, httpx.AsyncClient(base_url=web.base_url) as client:
            for method, target, body, _, _ in QUERIES:
                response = await client.request(method, target, json=body) if body is not None else \
                    await client.request(method, target)
                code = None
                if response.status_code >= 400:
                    assert response.headers["content-type"] == "application/json", (target, response.text)
                    code = response.json()["error"]["code"]
                outcomes.append((method, target, body, response.status_code, code))
    assert outcomes == QUERIES


async def test_the_table_tries_an_unknown_parameter_on_every_route_of_the_app() -> None:
    with trio.fail_after(20):
        async with running_web() as web:
            app = create_app(web.state)
    routes = {(method, re.sub(r"<(?:\w+:)?\w+>", "X", rule.rule)) for rule in app.url_map.iter_rules()
              if not rule.websocket and rule.endpoint != "static"  # static files take any query (cache busters)
              for method in (rule.methods or ()) if method not in {"HEAD", "OPTIONS"}}
    refused = {(method, re.sub(r"/(BTCUSDT|SOLUSDT|dashboard\.js)(?=\?|$)", "/X", target.split("?")[0]))
               for method, target, _, _, code in QUERIES if code == "unknown_parameter"}
    assert routes - refused == set()


async def test_the_message_names_the_parameter_the_route_and_what_it_takes() -> None:
    with trio.fail_after(20):
        async with running_web() as web, httpx.AsyncClient(base_url=web.base_url) as client:
            misspelt = (await client.get("/api/candles/BTCUSDT?lmit=5")).json()["error"]["message"]
            several = (await client.get("/api/ticks?a=1&b=2")).json()["error"]["message"]
            repeated = (await client.get("/api/candles/BTCUSDT?limit=1&limit=2")).json()["error"]["message"]
    assert misspelt == ("unknown query parameter 'lmit' for GET /api/candles/{symbol}; did you mean 'limit'?; "
                        "it takes end, interval, limit, start")
    assert several == "unknown query parameters 'a', 'b' for GET /api/ticks; it takes none"
    assert repeated == "query parameter 'limit' is given 2 times for GET /api/candles/{symbol}; give it once"


async def test_a_refused_query_leaves_the_keep_alive_connection_working() -> None:
    with trio.fail_after(20):
        async with running_web() as web, httpx.AsyncClient(base_url=web.base_url) as client:
            refused = await client.post("/api/symbols?symbol=BTCUSDT", json={"symbol": "BTCUSDT"})
            assert refused.status_code == 400
            # The body the route never read does not end up in front of the next request.
            assert (await client.get("/api/ticks")).status_code == 200
            again = await client.post("/api/symbols", json={"symbol": "BTCUSDT"})
    assert again.json()["error"]["code"] == "already_subscribed"


async def test_the_feed_refuses_a_query_before_the_upgrade() -> None:
    with trio.fail_after(20):
        async with running_web() as web:
            with pytest.raises(ConnectionRejected) as refused:
                async with open_websocket_url(web.ws_url + "?symbols=BTCUSDT"):
                    pass
            async with open_websocket_url(web.ws_url) as accepted:
                await accepted.send_message('{"op": "ping"}')
                assert json.loads(await accepted.get_message()) == {"op": "pong"}
    assert refused.value.status_code == 400
    assert refused.value.body is not None
    error = json.loads(refused.value.body)["error"]
    assert error == {"code": "unknown_parameter",
                     "message": "unknown query parameter 'symbols' for GET /ws; it takes none"}


async def test_a_role_process_refuses_queries_in_the_error_shape() -> None:
    app = create_role_app("persist", lambda: (True, {"ticks_written": 0}), {})
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            urls = await nursery.start(serve_http, app, "127.0.0.1", 0)
            async with httpx.AsyncClient(base_url=urls[0]) as client:
                responses = {target: await client.get(target) for target in (
                    "/health", "/health?role=api", "/metrics", "/metrics?name=x&name=y", "/nope")}
            nursery.cancel_scope.cancel()
    outcomes = {target: (response.status_code,
                         response.json()["error"]["code"] if response.status_code >= 400 else None)
                for target, response in responses.items()}
    assert outcomes == {
        "/health": (200, None),
        "/health?role=api": (400, "unknown_parameter"),
        "/metrics": (200, None),
        "/metrics?name=x&name=y": (400, "unknown_parameter"),
        "/nope": (404, "not_found"),
    }
    assert responses["/health?role=api"].json()["error"]["message"] == (
        "unknown query parameter 'role' for GET /health; it takes none")


@pytest.mark.parametrize(
    ("given", "code"),
    [
        ([], None),
        ([("limit", ["5"])], None),
        ([("limit", ["5"]), ("interval", ["1m"])], None),
        ([("limit", ["5", "5"])], "repeated_parameter"),
        ([("lmit", ["5"])], "unknown_parameter"),
        # Unknown is told before repeated: a repeated misspelling is first of all a misspelling.
        ([("limit", ["1", "2"]), ("lmit", ["5"])], "unknown_parameter"),
    ],
)
def test_check_query(given: list[tuple[str, list[str]]], code: str | None) -> None:
    try:
        check_query(given, frozenset({"limit", "interval"}), "GET /x")
    except ApiError as error:
        assert (error.status, error.code) == (400, code)
    else:
        assert code is None
