"""A real headless Chromium for the dashboard's tests, driven by Playwright from Trio tests.

Playwright's sync API is bound to the thread that started it, so every call goes through one dedicated worker
thread (``Browser.call``); the Trio test awaits it without blocking the service and simulator it runs on the
same loop. Chromium is Debian's (``/usr/bin/chromium``, or ``CHROMIUM`` in the environment): Playwright's own
browser download cannot work here. Without Chromium or Playwright, ``chromium_or_skip`` skips with what to install.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import attrs
import pytest
import trio

T = TypeVar("T")

# As root Chromium needs --no-sandbox; the rest keep it from reaching for the network on its own.
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-default-apps", "--no-default-browser-check",
]
# Playwright's own timeout for one call (a test's fail_after bounds the whole test).
CALL_TIMEOUT_MS = 15_000
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


def chromium_or_skip() -> str:
    path = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).is_file():
        pytest.skip("browser tests need Chromium: apt-get install -y chromium")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("browser tests need Playwright: pip install -c constraints.txt -e '.[test]'")
    return path


def is_loopback(url: str) -> bool:
    parts = urlsplit(url)
    if parts.scheme in ("data", "blob", "about"):
        return True
    return parts.hostname in ("127.0.0.1", "localhost", "::1")


@attrs.define
class PageRecord:
    """What a page did: console errors, uncaught exceptions, and every request (HTTP and WebSocket)."""

    console_errors: list[str] = attrs.Factory(list)
    page_errors: list[str] = attrs.Factory(list)
    requests: list[str] = attrs.Factory(list)

    def off_loopback(self) -> list[str]:
        return [url for url in self.requests if not is_loopback(url)]


class Browser:
    def __init__(self, worker: ThreadPoolExecutor) -> None:
        self._worker = worker
        self._playwright: Any = None
        self._context: Any = None

    async def call(self, function: Callable[..., T], *args: Any) -> T:
        """Runs ``function(*args)`` on the Playwright thread."""
        future = self._worker.submit(function, *args)
        return await trio.to_thread.run_sync(future.result, abandon_on_cancel=True)

    async def evaluate(self, page: Any, expression: str, arg: object = None) -> Any:
        return await self.call(lambda: page.evaluate(expression, arg))

    async def text(self, page: Any, selector: str) -> str:
        text: str = await self.call(lambda: page.text_content(selector))
        return text

    async def wait_for(self, page: Any, expression: str, arg: object = None) -> None:
        """Until the JavaScript ``expression`` (a function of ``arg``) is truthy in ``page``: checked on every
        animation frame, bounded by Playwright's call timeout."""
        from playwright.sync_api import TimeoutError as PlaywrightTimeout

        def wait() -> str | None:
            try:
                page.wait_for_function(expression, arg=arg)
            except PlaywrightTimeout:
                # What the page showed, for the failure message.
                text: str = page.evaluate("() => document.body.innerText")
                return text
            return None

        shown = await self.call(wait)
        if shown is not None:
            raise AssertionError(f"timed out waiting for {expression} (arg {arg!r}); the page showed:\n{shown}")

    async def new_page(self, width: int = 1400, height: int = 900) -> tuple[Any, PageRecord]:
        record = PageRecord()

        def open_page() -> Any:
            page = self._context.new_page()
            page.set_viewport_size({"width": width, "height": height})
            page.set_default_timeout(CALL_TIMEOUT_MS)
            page.on("console", lambda message: message.type == "error" and record.console_errors.append(message.text))
            page.on("pageerror", lambda error: record.page_errors.append(str(error)))
            page.on("request", lambda request: record.requests.append(request.url))
            page.on("websocket", lambda socket: record.requests.append(socket.url))
            return page

        return await self.call(open_page), record

    def _start(self, executable: str, profile: str) -> None:
        from playwright.sync_api import sync_playwright

        self._playwright = sync_playwright().start()
        # A fresh, empty profile (user-data-dir) per test.
        self._context = self._playwright.chromium.launch_persistent_context(
            profile, executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        # Nothing may leave loopback: such a request is recorded (the test fails on it) and never sent.
        self._context.route(lambda url: not is_loopback(url), lambda route: route.abort())

    def _stop(self) -> None:
        if self._context is not None:
            self._context.close()
        if self._playwright is not None:
            self._playwright.stop()


@asynccontextmanager
async def open_browser() -> AsyncIterator[Browser]:
    executable = chromium_or_skip()
    worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="playwright")
    browser = Browser(worker)
    with tempfile.TemporaryDirectory(prefix="marketdata-chromium-") as profile:
        try:
            await browser.call(browser._start, executable, profile)
            yield browser
        finally:
            with trio.CancelScope(shield=True):
                await browser.call(browser._stop)
            worker.shutdown(wait=False)
