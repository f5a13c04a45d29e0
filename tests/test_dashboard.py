"""The dashboard's files as the app serves them: the page at /, its modules, the vendored chart, /api/config."""

from __future__ import annotations

import hashlib
import re
import tomllib
from pathlib import Path

import httpx
import trio
from web_harness import running_web, web_settings

from app.intervals import Interval
from app.web.dashboard import STATIC_DIR

ROOT = Path(__file__).resolve().parents[1]
VENDOR = STATIC_DIR / "vendor"
# Absolute URLs the shipped files may name (none is fetched: an XML namespace, licence texts, the link the
# chart's licence asks for).
KNOWN_URLS = {"http://www.w3.org/2000/svg", "https://www.apache.org/licenses/LICENSE-2.0", "https://www.tradingview.com/"}


def module_imports(source: str) -> list[str]:
    """The relative module paths an ES module imports (``import {...} from "./x.js"``)."""
    return re.findall(r'\bfrom\s+"(\.{1,2}/[^"]+)"', source)


async def test_the_page_and_every_module_it_loads_are_served_from_the_package() -> None:
    with trio.fail_after(20):
        async with running_web() as web, httpx.AsyncClient(base_url=web.base_url) as client:
            page = await client.get("/")
            scripts = re.findall(r'<script type="module" src="([^"]+)"', page.text)
            styles = re.findall(r'<link rel="stylesheet" href="([^"]+)"', page.text)
            # Every module, following imports from the entry point.
            pending, served = list(scripts), {}
            while pending:
                path = pending.pop()
                if path in served:
                    continue
                response = await client.get(path)
                served[path] = response
                for target in module_imports(response.text):
                    pending.append(str(Path(path).parent / target).replace("/./", "/"))
            css = await client.get(styles[0])
            missing = await client.get("/static/no-such-file.js")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.headers["cache-control"] == "no-cache"
    assert scripts == ["/static/dashboard.js"] and styles == ["/static/dashboard.css"]
    assert {path: response.status_code for path, response in served.items()} == dict.fromkeys(served, 200)
    assert "/static/vendor/lightweight-charts.js" in served
    assert all("javascript" in response.headers["content-type"] for response in served.values())
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


def test_the_shipped_files_name_no_other_host() -> None:
    urls = set()
    for path in STATIC_DIR.rglob("*"):
        if path.suffix in (".html", ".js", ".css"):
            urls.update(re.findall(r"""https?://[^\s"'`)<>?$]+""", path.read_text()))
    assert urls <= KNOWN_URLS, urls - KNOWN_URLS


def test_the_vendored_chart_library_is_the_version_and_file_its_notice_names() -> None:
    notice = dict(re.findall(r"^(\w+): (.+)$", (VENDOR / "lightweight-charts.NOTICE").read_text(), re.M))
    library = (VENDOR / "lightweight-charts.js").read_bytes()
    assert notice["package"] == "lightweight-charts"
    assert notice["sha256"] == hashlib.sha256(library).hexdigest()
    assert f"Lightweight Charts™ v{notice['version']}".encode() in library[:300]
    assert b"Apache License" in (VENDOR / "lightweight-charts.LICENSE").read_bytes()
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["app"]
    assert {"web/static/*", "web/static/vendor/*"} <= set(package_data)


async def test_config_tells_the_page_what_the_settings_decide() -> None:
    settings = web_settings(candle_intervals=(Interval("1s"), Interval("1h")), stale_after_seconds=12.5,
                            binance_ws_url="ws://127.0.0.1:9/ws", binance_rest_url="http://127.0.0.1:9")
    with trio.fail_after(20):
        async with running_web(settings) as web, httpx.AsyncClient(base_url=web.base_url) as client:
            response = await client.get("/api/config")
    assert response.status_code == 200
    assert response.json() == {
        "candle_intervals": ["1s", "1h"],
        "stale_after_seconds": 12.5,
        "exchange_ws_url": "ws://127.0.0.1:9/ws",
        "exchange_rest_url": "http://127.0.0.1:9",
    }
