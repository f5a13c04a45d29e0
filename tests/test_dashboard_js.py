"""The dashboard's pure modules in a real Chromium, against Python references, with Hypothesis.

``parseTickFrame`` (the feed's tick frames reduced to the newest tick per symbol, decimals exact) is given frames
rendered by the feed's own renderer; ``CandleBook`` (history plus live updates and revisions) is checked against
a ten-line reference. The modules are served from ``app/web/static`` by a plain HTTP server on loopback.
"""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import orjson
import pytest
from browser import CHROMIUM_ARGS, chromium_or_skip
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.convert import decimal_text
from app.model import Tick
from app.web.dashboard import STATIC_DIR
from app.web.feed import RenderCache

SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT", "X1")
# Explicit alphabet: Binance decimals are digits with at most one point.
DECIMAL = st.builds(
    lambda whole, fraction: Decimal(f"{whole}.{fraction}" if fraction else whole),
    st.text("0123456789", min_size=1, max_size=9).map(lambda digits: digits.lstrip("0") or "0"),
    st.text("0123456789", max_size=8),
).filter(lambda value: value > 0)
EXAMPLES = settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def page() -> Iterator[Any]:
    executable = chromium_or_skip()
    from playwright.sync_api import sync_playwright

    handler = functools.partial(_QuietHandler, directory=str(STATIC_DIR))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
                page = browser.new_page()
                page.set_default_timeout(15_000)
                page.goto(f"http://127.0.0.1:{server.server_address[1]}/dashboard.css")  # any page of that origin
                page.evaluate("""async () => {
                    window.exactJson = await import("/exact-json.js");
                    window.candleBook = await import("/candle-book.js");
                }""")
                yield page
                browser.close()
        finally:
            server.shutdown()


def tick_frame(ticks: list[Tick]) -> str:
    """A ticks frame exactly as the feed writes it."""
    return orjson.dumps({"channel": "ticks", "data": RenderCache().render(ticks)}).decode()


@st.composite
def tick_lists(draw: st.DrawFn) -> list[Tick]:
    count = draw(st.integers(1, 40))
    symbols = draw(st.lists(st.sampled_from(SYMBOLS), min_size=count, max_size=count))
    ticks = []
    for index, symbol in enumerate(symbols):
        ticks.append(Tick(symbol=symbol, price=draw(DECIMAL), quantity=draw(DECIMAL),
                          trade_time_ms=1_723_161_300_000 + index, event_time_ms=1_723_161_300_001 + index,
                          trade_id=1_000 + index, is_buyer_maker=draw(st.booleans())))
    return ticks


@EXAMPLES
@given(ticks=tick_lists())
def test_a_tick_frame_reduces_to_the_newest_tick_per_symbol_with_exact_decimals(page: Any, ticks: list[Tick]) -> None:
    newest: dict[str, Tick] = {}
    for tick in ticks:
        newest[tick.symbol] = tick
    result = page.evaluate("(text) => window.exactJson.parseTickFrame(text)", tick_frame(ticks))
    assert result["count"] == len(ticks)
    shown = {tick["symbol"]: (tick["trade_id"], tick["price"], tick["quantity"]) for tick in result["data"]}
    assert shown == {symbol: (tick.trade_id, decimal_text(tick.price), decimal_text(tick.quantity))
                     for symbol, tick in newest.items()}


def test_a_frame_laid_out_otherwise_is_parsed_exactly_all_the_same(page: Any) -> None:
    # Keys in another order: the fast path cannot find the ticks by their opening and falls back.
    text = '{"channel":"ticks","data":[{"price":61000.10000001,"symbol":"BTCUSDT","trade_id":7,"quantity":0.1},' \
           '{"price":61000.2,"symbol":"BTCUSDT","trade_id":8,"quantity":1E-8}]}'
    result = page.evaluate("(text) => window.exactJson.parseTickFrame(text)", text)
    assert result == {"channel": "ticks", "count": 2,
                      "data": [{"price": "61000.2", "symbol": "BTCUSDT", "trade_id": 8, "quantity": "1E-8"}]}


def supersedes(new: dict[str, Any], old: dict[str, Any]) -> bool:
    """The reference: a higher revision wins; then closed over open; then the later last trade."""
    order = ("revision", "closed", "last_trade_id")
    return tuple(new[key] for key in order) >= tuple(old[key] for key in order)


@st.composite
def candle_updates(draw: st.DrawFn) -> list[dict[str, Any]]:
    updates = []
    for _ in range(draw(st.integers(1, 30))):
        minute = draw(st.integers(0, 6))
        updates.append({
            "open_time": f"2024-08-08T23:5{minute}:00.000+00:00",
            "close": str(draw(st.integers(1, 99))),
            "revision": draw(st.integers(0, 2)),
            "closed": draw(st.booleans()),
            "last_trade_id": draw(st.integers(-1, 50)),
        })
    return updates


@EXAMPLES
@given(history=candle_updates(), updates=candle_updates())
def test_the_candle_book_keeps_the_newest_state_of_every_candle_in_time_order(
    page: Any, history: list[dict[str, Any]], updates: list[dict[str, Any]],
) -> None:
    loaded: dict[str, dict[str, Any]] = {}
    for candle in history:  # a history has one entry per open time
        loaded[candle["open_time"]] = candle
    expected = dict(loaded)
    for candle in updates:
        current = expected.get(candle["open_time"])
        if current is None or supersedes(candle, current):
            expected[candle["open_time"]] = candle
    result = page.evaluate("""([history, updates]) => {
        const book = new window.candleBook.CandleBook();
        book.load(history);
        const changes = updates.map((candle) => book.apply(candle));
        return { candles: book.candles, changes };
    }""", [list(loaded.values()), updates])
    assert result["candles"] == [expected[key] for key in sorted(expected)]
    assert set(result["changes"]) <= {"none", "tail", "historical", "reset"}
