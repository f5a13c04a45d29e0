"""Who may change what (ADMIN_TOKEN), through real Hypercorn on loopback with httpx."""

from __future__ import annotations

import logging
import re
from typing import Any

import httpx
import pytest
import trio
from test_openapi import fetch_document
from test_web_routes import assert_error
from web_harness import check_schema, running_web, web_settings

from app.demo import change_examples
from app.settings import SettingsError, load_settings
from app.web.admin import AdminAccess, is_loopback
from app.web.errors import ApiError

TOKEN = "k7Qm-2vX_9pLr.4sT~Zc8+Nw/Ef3Hj="
# (method, path, JSON body): the two requests that change the service, and reads that stay open.
ADD = ("POST", "/api/symbols", {"symbol": "BTCUSDT"})
REMOVE = ("DELETE", "/api/symbols/SOLUSDT", None)
READS = [("GET", "/api/symbols", None), ("GET", "/api/ticks", None), ("GET", "/api/candles/BTCUSDT", None),
         ("GET", "/metrics", None), ("GET", "/openapi.json", None)]


async def _request(client: httpx.AsyncClient, call: tuple[str, str, Any], authorization: str | None
                   ) -> httpx.Response:
    method, path, body = call
    headers = {} if authorization is None else {"Authorization": authorization}
    if body is None:
        return await client.request(method, path, headers=headers)
    return await client.request(method, path, json=body, headers=headers)


# (Authorization header, expected status, expected code) with ADMIN_TOKEN set. Past the check, the add meets a
# symbol already subscribed (409) and the removal one that is not (404): the request got through.
WITH_TOKEN: list[tuple[str | None, int, int, str, str]] = [
    (None, 401, 401, "missing_token", "missing_token"),
    ("", 401, 401, "missing_token", "missing_token"),
    ("Bearer", 401, 401, "missing_token", "missing_token"),
    (f"Basic {TOKEN}", 401, 401, "missing_token", "missing_token"),
    ("Bearer wrong", 403, 403, "invalid_token", "invalid_token"),
    (f"Bearer {TOKEN[:-1]}", 403, 403, "invalid_token", "invalid_token"),
    (f"Bearer {TOKEN}x", 403, 403, "invalid_token", "invalid_token"),
    (f"Bearer {TOKEN.lower()}", 403, 403, "invalid_token", "invalid_token"),
    (f"Bearer {TOKEN}", 409, 404, "already_subscribed", "not_subscribed"),
    (f"bearer  {TOKEN}", 409, 404, "already_subscribed", "not_subscribed"),
]


async def test_with_a_token_changes_need_it_and_reads_stay_open() -> None:
    outcomes = []
    with trio.fail_after(30):
        async with running_web(admin=AdminAccess(token=TOKEN)) as web, \
                httpx.AsyncClient(base_url=web.base_url) as client:
            for authorization, *_ in WITH_TOKEN:
                add = await _request(client, ADD, authorization)
                remove = await _request(client, REMOVE, authorization)
                outcomes.append((authorization, add.status_code, remove.status_code,
                                 add.json()["error"]["code"], remove.json()["error"]["code"]))
                for response in (add, remove):
                    assert_error(response, response.status_code, response.json()["error"]["code"])
                    if response.status_code == 401:
                        assert response.headers["www-authenticate"].startswith("Bearer")
            for read in READS:
                assert (await _request(client, read, None)).status_code == 200, read
            # Refused before the body is read: an anonymous client learns nothing about what it sent.
            assert_error(await client.post("/api/symbols", content=b"{not json"), 401, "missing_token")
            assert TOKEN not in (await client.get("/openapi.json")).text
    assert outcomes == WITH_TOKEN


async def test_beyond_loopback_without_a_token_changes_are_disabled_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="app.web.admin")
    with trio.fail_after(30):
        # Served on 127.0.0.1 as every test server is; the access rule is told HTTP_HOST is 0.0.0.0.
        async with running_web(admin=AdminAccess(host="0.0.0.0")) as web, \
                httpx.AsyncClient(base_url=web.base_url) as client:
            for authorization in (None, f"Bearer {TOKEN}"):
                for call in (ADD, REMOVE):
                    message = assert_error(await _request(client, call, authorization), 403, "admin_disabled")
                    assert "ADMIN_TOKEN" in message
            for read in READS:
                assert (await _request(client, read, None)).status_code == 200, read
    warnings = [record for record in caplog.records if record.name == "app.web.admin"]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert "admin_disabled host=0.0.0.0" in warnings[0].getMessage()


async def test_on_loopback_without_a_token_changes_are_open_and_nothing_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="app.web.admin")
    with trio.fail_after(30):
        async with running_web() as web, httpx.AsyncClient(base_url=web.base_url) as client:
            assert_error(await _request(client, ADD, None), 409, "already_subscribed")
            assert_error(await _request(client, REMOVE, None), 404, "not_subscribed")
    assert [record for record in caplog.records if record.name == "app.web.admin"] == []


def test_a_non_ascii_token_matches_the_bytes_the_client_sent() -> None:
    access = AdminAccess(token="caf\u00e9-token")
    # Quart hands header values decoded as latin-1: the UTF-8 bytes of "café" arrive as "cafÃ©".
    access.authorize("Bearer " + "caf\u00e9-token".encode().decode("latin-1"))
    with pytest.raises(ApiError) as refused:
        access.authorize("Bearer caf\u00e9-token")
    assert (refused.value.status, refused.value.code) == (403, "invalid_token")


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("[::1]", True), ("localhost", True),
     ("LOCALHOST", True), ("0.0.0.0", False), ("::", False), ("192.168.1.10", False), ("example.internal", False),
     ("", False)],
)
def test_which_hosts_count_as_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


async def test_the_auth_answers_are_documented_and_fit_the_error_schema() -> None:
    with trio.fail_after(30):
        async with running_web(admin=AdminAccess(token=TOKEN)) as web, \
                httpx.AsyncClient(base_url=web.base_url) as client:
            document = await fetch_document(client)
            answers = [await _request(client, call, authorization)
                       for call in (ADD, REMOVE) for authorization in (None, "Bearer wrong")]
    operations = {("POST", "/api/symbols"): document["paths"]["/api/symbols"]["post"],
                  ("DELETE", "/api/symbols/SOLUSDT"): document["paths"]["/api/symbols/{symbol}"]["delete"]}
    for response in answers:
        operation = operations[(response.request.method, response.request.url.path)]
        documented = operation["responses"][str(response.status_code)]
        check_schema(response.json(), documented["content"]["application/json"]["schema"], document)
        assert operation["security"] == [{"adminToken": []}]
    scheme = document["components"]["securitySchemes"]["adminToken"]
    assert scheme["type"] == "http" and scheme["scheme"] == "bearer"
    assert re.search(r"ADMIN_TOKEN", scheme["description"])


@pytest.mark.parametrize("token", [None, TOKEN])
async def test_the_demo_prints_change_commands_that_get_past_the_check(token: str | None) -> None:
    settings = web_settings(admin_token=token)
    with trio.fail_after(30):
        async with running_web(settings) as web, httpx.AsyncClient() as client:
            lines = change_examples(web.base_url, "ETHUSDT", settings)
            delete = next(line for line in lines if "curl -X DELETE" in line)
            headers = {"Authorization": f"Bearer {TOKEN}"} if "'Authorization: Bearer TOKEN'" in delete else {}
            response = await client.delete(delete.split()[-1], headers=headers)
    assert bool(headers) is (token is not None)
    # No ingestion runs here, so the unsubscribe itself cannot reach an exchange: 503, past the token check.
    assert_error(response, 503, "exchange_unavailable")


def test_the_demo_says_when_changes_are_disabled() -> None:
    lines = change_examples("http://192.0.2.1:8000", "ETHUSDT", web_settings(http_host="0.0.0.0"))
    assert lines == ["Changing subscriptions is disabled: the API listens beyond loopback and no --admin-token "
                     "is set."]


def test_the_admin_token_setting_is_validated_and_never_shown() -> None:
    settings = load_settings(environ={"ADMIN_TOKEN": f" {TOKEN} "}, dotenv_path=None)
    assert settings.admin_token == TOKEN
    assert TOKEN not in repr(settings)
    assert load_settings(environ={}, dotenv_path=None).admin_token is None
    for bad, problem in [("short-token", "at least 16"), ("has space inside 0123456789", "letters, digits"),
                         ("", "letters, digits"), ("caf\u00e9" * 5, "letters, digits")]:
        with pytest.raises(SettingsError, match=problem):
            load_settings(environ={"ADMIN_TOKEN": bad}, dotenv_path=None)
    assert load_settings(environ={"MAX_WS_CLIENTS": "5000"}, dotenv_path=None).max_ws_clients == 5000
    with pytest.raises(SettingsError, match="MAX_WS_CLIENTS"):
        load_settings(environ={"MAX_WS_CLIENTS": "0"}, dotenv_path=None)
