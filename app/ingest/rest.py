"""Binance's REST API for backfill and symbol validation, through httpx under Trio.

One ``BinanceRest`` per process: it shares the IP's request-weight budget between all callers. It reads the
used weight from ``X-MBX-USED-WEIGHT-1M`` and pauses before the budget runs out; a 429 blocks every caller
for ``Retry-After`` seconds (ignoring 429s is what earns 418 bans); a 418 (banned) is not retried: the
request fails with ``RestUnavailable`` so the caller reports its gap instead of waiting for hours.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import httpx
import orjson
import trio

from app.backoff import Backoff, BackoffPolicy
from app.convert import FrameError, quote_frame, trade_from_rest
from app.ingest.status import IngestStatus
from app.model import Tick

log = logging.getLogger(__name__)

HISTORICAL_TRADES_WEIGHT = 25
EXCHANGE_INFO_WEIGHT = 20
SERVER_TIME_WEIGHT = 1
# /api/v3/ticker/24hr costs 2 for 1-20 symbols, 40 for 21-100, 80 for more or for all symbols: requests of 20
# are the cheapest per symbol (0.1 each) until 800 symbols, beyond which one request for all (80) is.
TICKER_CHEAP_SYMBOLS = 20
TICKER_CHEAP_WEIGHT = 2
TICKER_ALL_WEIGHT = 80
# Binance serves at most this many trades per historicalTrades request.
TRADES_PAGE_LIMIT = 1000
# Binance spot's default; replaced by the REQUEST_WEIGHT limit exchangeInfo reports.
DEFAULT_WEIGHT_LIMIT = 6000
# Pause before the budget is used up, leaving room for other clients on the same IP.
WEIGHT_HEADROOM = 0.9
# Retry-After missing from a 429: wait this long.
DEFAULT_RETRY_AFTER_SECONDS = 30.0
# One request gives up after waiting this long in total for rate limits (its gap is then reported).
MAX_RATE_LIMIT_WAIT_SECONDS = 300.0
# Network errors and 5xx answers: 4 retries after 1, 2, 4 and 8 s. No jitter: one request's retries, and the
# rate-limit rules above already keep this process's callers from bunching up on the exchange.
TRANSIENT_RETRY = BackoffPolicy(start=1.0, cap=8.0, jitter=False, max_retries=4)
REQUEST_TIMEOUT_SECONDS = 10.0
# Binance's "Invalid symbol." error code.
INVALID_SYMBOL = -1121


class RestError(Exception):
    """The REST API refused a request (HTTP 4xx with Binance's ``{"code", "msg"}``): retrying will not help."""

    def __init__(self, message: str, status: int | None = None, code: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class RestUnavailable(RestError):
    """The REST API cannot be used now (down, rate limited beyond patience, or this IP is banned)."""


def retry_after_seconds(headers: Mapping[str, str], default: float = DEFAULT_RETRY_AFTER_SECONDS) -> float:
    """Binance sends ``Retry-After`` in whole seconds; anything unreadable means ``default``."""
    text = headers.get("retry-after")
    if text is None:
        return default
    try:
        seconds = float(text)
    except ValueError:
        return default
    return seconds if math.isfinite(seconds) and seconds >= 0 else default


def seconds_to_next_minute(epoch_seconds: float) -> float:
    """Binance's weight windows are calendar minutes of its clock (close enough to ours)."""
    return 60.0 - epoch_seconds % 60.0


class BinanceRest:
    """``historical_trades``, ``last_trade_ids`` and ``exchange_info`` with Binance's rate-limit rules applied."""

    def __init__(
        self,
        base_url: str,
        status: IngestStatus,
        *,
        client: httpx.AsyncClient | None = None,
        max_rate_limit_wait: float = MAX_RATE_LIMIT_WAIT_SECONDS,
        transient_retry: BackoffPolicy = TRANSIENT_RETRY,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._status = status
        self._client = client if client is not None else httpx.AsyncClient(timeout=REQUEST_TIMEOUT_SECONDS)
        self._max_rate_limit_wait = max_rate_limit_wait
        self._transient_retry = transient_retry
        self.weight_limit = DEFAULT_WEIGHT_LIMIT
        self.used_weight = 0
        # trio.current_time() before which no request is sent (after a 429 or 418).
        self._blocked_until = 0.0
        self.banned_until: float | None = None

    async def aclose(self) -> None:
        await self._client.aclose()

    async def historical_trades(self, symbol: str, from_id: int, limit: int = TRADES_PAGE_LIMIT) -> list[Tick]:
        """Up to ``limit`` trades of ``symbol`` with ids from ``from_id``, ascending."""
        rows = await self.get_json(
            "/api/v3/historicalTrades",
            {"symbol": symbol, "fromId": str(from_id), "limit": str(min(limit, TRADES_PAGE_LIMIT))},
            HISTORICAL_TRADES_WEIGHT,
        )
        if not isinstance(rows, list):
            raise RestError(f"historicalTrades returned {quote_frame(rows)}, not a list")
        try:
            return [trade_from_rest(symbol, row) for row in rows]
        except (FrameError, TypeError) as error:
            raise RestError(f"historicalTrades returned a bad row: {error}") from None

    async def last_trade_ids(self, symbols: Sequence[str]) -> dict[str, int]:
        """The exchange's last trade id per symbol (-1: no trade in the last 24 hours), from the MINI 24hr
        ticker, asked with the least request weight. Symbols Binance does not list are left out."""
        wanted = list(dict.fromkeys(symbols))
        if not wanted:
            return {}
        chunks = [wanted[start : start + TICKER_CHEAP_SYMBOLS] for start in range(0, len(wanted), TICKER_CHEAP_SYMBOLS)]
        if len(chunks) * TICKER_CHEAP_WEIGHT > TICKER_ALL_WEIGHT:
            rows = await self._ticker({"type": "MINI"}, TICKER_ALL_WEIGHT)
            every = _last_ids(rows)
            return {symbol: every[symbol] for symbol in wanted if symbol in every}
        last_ids: dict[str, int] = {}
        for chunk in chunks:
            params = {"symbols": orjson.dumps(chunk).decode(), "type": "MINI"}
            try:
                last_ids.update(_last_ids(await self._ticker(params, TICKER_CHEAP_WEIGHT)))
            except RestError as error:
                if error.code != INVALID_SYMBOL or len(chunk) == 1:
                    raise
                # One delisted symbol fails the whole request: ask the others one by one.
                for symbol in chunk:
                    try:
                        last_ids.update(_last_ids(await self._ticker({"symbol": symbol, "type": "MINI"},
                                                                     TICKER_CHEAP_WEIGHT)))
                    except RestError as single_error:
                        if single_error.code != INVALID_SYMBOL:
                            raise
                        log.warning("ticker: symbol not listed symbol=%s", symbol)
        return last_ids

    async def server_time_ms(self) -> int:
        """The exchange's clock (epoch ms)."""
        body = await self.get_json("/api/v3/time", {}, SERVER_TIME_WEIGHT)
        if not isinstance(body, dict) or type(body.get("serverTime")) is not int:
            raise RestError(f"time returned {quote_frame(body)}")
        return int(body["serverTime"])

    async def _ticker(self, params: Mapping[str, str], weight: int) -> Any:
        return await self.get_json("/api/v3/ticker/24hr", params, weight)

    async def exchange_info(self) -> dict[str, Any]:
        info = await self.get_json("/api/v3/exchangeInfo", {}, EXCHANGE_INFO_WEIGHT)
        if not isinstance(info, dict) or not isinstance(info.get("symbols"), list):
            raise RestError(f"exchangeInfo returned {quote_frame(info)}")
        for limit in info.get("rateLimits", ()):
            if (
                isinstance(limit, dict)
                and limit.get("rateLimitType") == "REQUEST_WEIGHT"
                and limit.get("interval") == "MINUTE"
                and limit.get("intervalNum") == 1
                and type(limit.get("limit")) is int
                and limit["limit"] > 0
            ):
                self.weight_limit = limit["limit"]
        return info

    async def get_json(self, path: str, params: Mapping[str, str], weight: int) -> Any:
        """The decoded JSON body of a GET, after waiting out rate limits and retrying transient failures
        (network errors and timeouts, 5xx answers, a 200 whose body is not JSON) with ``transient_retry``."""
        url = self.base_url + path
        rate_limit_waited = 0.0
        transient = Backoff(self._transient_retry)
        while True:
            blocked_for = max(self._blocked_until - trio.current_time(), 0.0)
            if rate_limit_waited + blocked_for > self._max_rate_limit_wait:
                # Waiting that long would hold the live ticks behind this gap for too long: give it up.
                if self.banned_until == self._blocked_until:
                    raise RestUnavailable(f"GET {path}: IP banned (HTTP 418) for another {blocked_for:.0f} s", 418)
                raise RestUnavailable(f"GET {path}: rate limited (HTTP 429) for another {blocked_for:.0f} s", 429)
            rate_limit_waited += blocked_for
            await self._respect_limits(weight)
            self._status.rest_requests += 1
            try:
                response = await self._client.get(url, params=params)
            except httpx.HTTPError as error:
                failure, status = f"GET {path} failed: {error!r}", None
            else:
                self._note_used_weight(response.headers)
                status = response.status_code
                if status == 200:
                    try:
                        return orjson.loads(response.content)
                    except orjson.JSONDecodeError:
                        # A body cut short, or a proxy's error page: the next answer may well be whole.
                        failure = f"GET {path} returned invalid JSON: {quote_frame(response.content)}"
                elif status in (418, 429):
                    self._rate_limited(path, response)
                    continue
                elif status >= 500:
                    failure = f"GET {path}: HTTP {status}: {quote_frame(response.content)}"
                else:
                    self._status.rest_errors += 1
                    raise _client_error(path, response)
            self._status.rest_errors += 1
            delay = transient.next_delay()
            if transient.exhausted:
                raise RestUnavailable(f"{failure} (after {transient.failures - 1} retries)", status)
            # INFO: the caller reports the request at WARNING if the retries do not save it.
            log.info("rest request failed path=%s retry_in=%.1f error=%s", path, delay, failure)
            await trio.sleep(delay)

    def _rate_limited(self, path: str, response: httpx.Response) -> None:
        """A 429 blocks every caller for Retry-After; a 418 (banned) too, and fails this request."""
        self._status.rest_rate_limited += 1
        delay = retry_after_seconds(response.headers)
        self._blocked_until = max(self._blocked_until, trio.current_time() + delay)
        if response.status_code == 418:
            self.banned_until = self._blocked_until
            log.warning("rest banned status=418 retry_after=%.0f path=%s", delay, path)
            raise RestUnavailable(f"GET {path}: this IP is banned for {delay:.0f} s (HTTP 418)", 418)
        log.warning("rest rate limited status=429 retry_after=%.1f path=%s", delay, path)

    async def _respect_limits(self, weight: int) -> None:
        now = trio.current_time()
        if self._blocked_until > now:
            await trio.sleep(self._blocked_until - now)
        if self.used_weight + weight > self.weight_limit * WEIGHT_HEADROOM:
            pause = seconds_to_next_minute(time.time())
            log.info("rest weight nearly used used=%d limit=%d pause=%.1f", self.used_weight, self.weight_limit, pause)
            await trio.sleep(pause)
            self.used_weight = 0

    def _note_used_weight(self, headers: Mapping[str, str]) -> None:
        text = headers.get("x-mbx-used-weight-1m")
        if text is not None and text.isdigit():
            self.used_weight = int(text)


def _last_ids(body: Any) -> dict[str, int]:
    rows = body if isinstance(body, list) else [body]
    last_ids: dict[str, int] = {}
    for row in rows:
        if not isinstance(row, dict) or not isinstance(row.get("symbol"), str) or type(row.get("lastId")) is not int:
            raise RestError(f"ticker/24hr returned a bad row: {quote_frame(row)}")
        last_ids[row["symbol"]] = row["lastId"]
    return last_ids


def _client_error(path: str, response: httpx.Response) -> RestError:
    code: int | None = None
    message = quote_frame(response.content)
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        body = None
    if isinstance(body, dict):
        code = body.get("code") if type(body.get("code")) is int else None
        message = str(body.get("msg", message))
    return RestError(f"GET {path}: HTTP {response.status_code}: {message}", response.status_code, code)
