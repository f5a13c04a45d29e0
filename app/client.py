"""A typed client for a running service: ``Client`` (the REST API) and ``open_feed`` (the ``/ws`` feed).

Both give the model's own attrs classes (``Tick``, ``Candle`` ...) with exact decimals, converted from the API's
JSON by ``app.convert``; every refusal is a ``ServiceError`` with the API's ``code`` and ``message``.
``Client`` runs on httpx, under Trio or asyncio; ``open_feed`` is Trio only (the project's WebSocket client).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import datetime
from typing import Any, Generic, Literal, TypeVar, overload
from urllib.parse import urlsplit, urlunsplit

import attrs
import cattrs
import httpx
import orjson
import trio

from app.backoff import Backoff
from app.convert import api_converter, api_json, candles_from_api, ticks_from_api
from app.errors import ServiceError
from app.ingest.reconnect import RECONNECT_BACKOFF
from app.ingest.stream_socket import HandshakeFailed, SocketClosed, StreamSocket, open_stream_socket
from app.model import Candle, Gap, ServiceHealth, SymbolSummary, Tick, ms_from_utc

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_TIMEOUT_SECONDS = 10.0
# Batches received but not yet read; when full the feed stops reading the socket, and the service cuts a
# client that stays behind off (close 1013): the feed says so (``FeedInterrupted``) and reconnects.
FEED_BUFFER = 64


def _refusal(response: httpx.Response) -> ServiceError:
    """The API's ``{"error": {"code", "message"}}``, or what came instead of it."""
    try:
        error = orjson.loads(response.content)["error"]
        return ServiceError(response.status_code, str(error["code"]), str(error["message"]))
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return ServiceError(response.status_code, "unexpected_response",
                            f"HTTP {response.status_code}: {response.text[:200]!r}")


def _structure(body: bytes, kind: Any) -> Any:
    try:
        return api_converter.structure(api_json(body), kind)
    except (ValueError, cattrs.BaseValidationError) as error:
        raise ServiceError(None, "unexpected_response", f"the response is not a {kind}: {error!r}") from None


def _time_param(moment: datetime | int | None) -> str | None:
    if moment is None:
        return None
    return str(moment if isinstance(moment, int) else ms_from_utc(moment))


class Client:
    """The REST API of a service at ``base_url`` (``http://127.0.0.1:8000``), as typed async methods.

        async with Client("http://127.0.0.1:8000") as client:
            tick = await client.tick("BTCUSDT")
    """

    def __init__(self, base_url: str, *, token: str | None = None, timeout: float = DEFAULT_TIMEOUT_SECONDS) -> None:
        """``token``: the service's ``ADMIN_TOKEN``, sent as a Bearer token (adding and removing symbols)."""
        self.base_url = base_url.rstrip("/")
        headers = {} if token is None else {"authorization": f"Bearer {token}"}
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout, headers=headers)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _request(self, method: str, path: str, *, params: dict[str, str] | None = None,
                       body: object = None, accept: Sequence[int] = (200,)) -> httpx.Response:
        try:
            response = await self._http.request(
                method, path, params=params, content=None if body is None else orjson.dumps(body),
                headers=None if body is None else {"content-type": "application/json"},
            )
        except httpx.TransportError as error:
            raise ServiceError(None, "unreachable", f"{method} {self.base_url}{path}: {error!r}") from None
        if response.status_code not in accept:
            raise _refusal(response)
        return response

    async def ticks(self) -> dict[str, Tick]:
        """The latest tick of every subscribed symbol that has traded (``GET /api/ticks``)."""
        response = await self._request("GET", "/api/ticks")
        result: dict[str, Tick] = _structure(response.content, dict[str, Tick])
        return result

    async def tick(self, symbol: str) -> Tick:
        """The latest tick of ``symbol``; ``ServiceError`` ``unknown_symbol`` or ``no_data`` otherwise."""
        response = await self._request("GET", f"/api/ticks/{symbol}")
        result: Tick = _structure(response.content, Tick)
        return result

    async def candles(
        self,
        symbol: str,
        interval: str = "1m",
        *,
        limit: int | None = None,
        start: datetime | int | None = None,
        end: datetime | int | None = None,
    ) -> list[Candle]:
        """``GET /api/candles/{symbol}``: oldest first, the open candle last; ``start``/``end`` are aware datetimes
        or epoch milliseconds bounding the open time."""
        params = {"interval": interval, "limit": None if limit is None else str(limit),
                  "start": _time_param(start), "end": _time_param(end)}
        response = await self._request("GET", f"/api/candles/{symbol}",
                                       params={key: value for key, value in params.items() if value is not None})
        result: list[Candle] = _structure(response.content, list[Candle])
        return result

    async def symbols(self) -> list[SymbolSummary]:
        """``GET /api/symbols``: each symbol's last trade, counters, gaps and trading status."""
        response = await self._request("GET", "/api/symbols")
        try:
            rows = api_json(response.content)["symbols"]
        except (ValueError, KeyError, TypeError) as error:
            raise ServiceError(None, "unexpected_response", f"no symbols in the response: {error!r}") from None
        result: list[SymbolSummary] = api_converter.structure(rows, list[SymbolSummary])
        return result

    async def add_symbol(self, symbol: str) -> None:
        """``POST /api/symbols``: subscribed live once the exchange acknowledged it."""
        await self._request("POST", "/api/symbols", body={"symbol": symbol}, accept=(201,))

    async def remove_symbol(self, symbol: str) -> None:
        """``DELETE /api/symbols/{symbol}``."""
        await self._request("DELETE", f"/api/symbols/{symbol}")

    async def health(self) -> ServiceHealth:
        """``GET /health``; a 503 is an answer too (``ok`` False, with its ``reasons``), not an error."""
        response = await self._request("GET", "/health", accept=(200, 503))
        result: ServiceHealth = _structure(response.content, ServiceHealth)
        return result


# --- the WebSocket feed ------------------------------------------------------------------------------------


class FeedInterrupted(Exception):
    """The feed's connection was lost: what the service sends until the feed has subscribed again is missed.
    The feed reconnects by itself (the ingest's backoff); iterating again goes on with what comes after
    (``Feed.wait_subscribed`` waits for that). Fill the hole from ``Client`` if it matters:
    ``last_trade_ids`` says where the ticks stopped."""

    def __init__(self, reason: str, last_trade_ids: dict[str, int]) -> None:
        super().__init__(f"the feed was interrupted; data may be missed until it is back: {reason}")
        self.reason = reason
        self.last_trade_ids = last_trade_ids


@attrs.define
class _Connection:
    """The feed task's state, read by the ``Feed``."""

    subscribed: trio.Event = attrs.Factory(trio.Event)
    interruptions: int = 0
    # Trades lost for good that the service told of (``{"op": "gap"}``), in the order told.
    gaps: list[Gap] = attrs.Factory(list)


@attrs.frozen(slots=True)
class _Lost:
    reason: str


def feed_url(url: str) -> str:
    """``http://host:port`` (the service's base URL) or ``ws://host:port/ws`` -> the feed's WebSocket URL."""
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    path = parts.path if parts.path.rstrip("/").endswith("/ws") else parts.path.rstrip("/") + "/ws"
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))


class Feed(Generic[T]):
    """Batches of ticks or candles from ``/ws``, in the order the service sent them.

    When the connection is lost the next iteration raises ``FeedInterrupted`` at the place of the hole; the
    feed meanwhile reconnects (the ingest's backoff) and resubscribes, and iterating again continues. Trades the
    service itself lost for good (an exchange gap it could not repair) are in ``gaps``, each logged at WARNING.
    """

    def __init__(self, batches: trio.MemoryReceiveChannel[list[T] | _Lost], connection: _Connection) -> None:
        self._batches: trio.MemoryReceiveChannel[list[T] | _Lost] = batches
        self._connection = connection
        # For ticks: the last trade id received per symbol.
        self.last_trade_ids: dict[str, int] = {}

    @property
    def interruptions(self) -> int:
        """How many times the connection was lost."""
        return self._connection.interruptions

    @property
    def subscribed(self) -> bool:
        return self._connection.subscribed.is_set()

    @property
    def gaps(self) -> tuple[Gap, ...]:
        """Every unrepaired gap the service told this feed of (its symbols only), oldest first."""
        return tuple(self._connection.gaps)

    async def wait_subscribed(self) -> None:
        """Returns once the feed is connected and subscribed (at once unless it is reconnecting)."""
        await self._connection.subscribed.wait()

    def __aiter__(self) -> Feed[T]:
        return self

    async def __anext__(self) -> list[T]:
        try:
            item = await self._batches.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None
        if isinstance(item, _Lost):
            raise FeedInterrupted(item.reason, dict(self.last_trade_ids))
        for entry in item:
            if isinstance(entry, Tick):
                self.last_trade_ids[entry.symbol] = entry.trade_id
        return item


@attrs.frozen(slots=True)
class _FeedRequest:
    url: str
    channel: str
    symbols: tuple[str, ...]
    interval: str | None

    def message(self) -> str:
        request: dict[str, object] = {"op": "subscribe", "channel": self.channel, "symbols": list(self.symbols)}
        if self.interval is not None:
            request["interval"] = self.interval
        return orjson.dumps(request).decode()


@overload
def open_feed(url: str, channel: Literal["ticks"] = ..., symbols: Iterable[str] = ...,
              interval: None = ...) -> AbstractAsyncContextManager[Feed[Tick]]: ...


@overload
def open_feed(url: str, channel: Literal["candles"], symbols: Iterable[str] = ...,
              interval: str = ...) -> AbstractAsyncContextManager[Feed[Candle]]: ...


def open_feed(url: str, channel: str = "ticks", symbols: Iterable[str] = ("*",),
              interval: str | None = None) -> AbstractAsyncContextManager[Feed[Any]]:
    """Subscribes to ``channel`` (``"ticks"``, or ``"candles"`` with an ``interval``) of ``symbols`` (``"*"``:
    all) on the service at ``url`` and yields the ``Feed``. Returns once subscribed: a refusal (an unknown
    interval ...) raises ``ServiceError`` here, as does a service that cannot be reached at first."""
    if channel not in ("ticks", "candles"):
        raise ValueError(f"channel must be 'ticks' or 'candles', not {channel!r}")
    if (channel == "candles") != (interval is not None):
        raise ValueError("an interval goes with the candles channel, and only with it")
    wanted = (symbols,) if isinstance(symbols, str) else tuple(symbols)
    request = _FeedRequest(feed_url(url), channel, wanted, interval)
    if channel == "ticks":
        return _open_feed(request, ticks_from_api)
    return _open_feed(request, candles_from_api)


@asynccontextmanager
async def _open_feed(request: _FeedRequest, decode: Callable[[object], list[T]]) -> AsyncIterator[Feed[T]]:
    send, receive = trio.open_memory_channel[list[T] | _Lost](FEED_BUFFER)
    connection = _Connection()
    refused: ServiceError | None = None
    async with trio.open_nursery() as nursery:
        try:
            await nursery.start(_keep_subscribed, request, decode, send, connection)
        except ServiceError as error:
            refused = error  # raised below, by itself rather than in the nursery's exception group
        else:
            with receive:
                yield Feed(receive, connection)
            nursery.cancel_scope.cancel()
    if refused is not None:
        raise refused


# The socket reports every way a connection ends as SocketClosed; connecting can fail with these too.
_CONNECTION_LOST = (SocketClosed, HandshakeFailed, OSError)


async def _keep_subscribed(
    request: _FeedRequest, decode: Callable[[object], list[T]], batches: trio.MemorySendChannel[list[T] | _Lost],
    connection: _Connection, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Connects, subscribes and forwards data; reports a lost connection in the data's place, then
    reconnects with backoff."""
    backoff = Backoff(RECONNECT_BACKOFF)
    async with batches:
        while True:
            try:
                async with open_stream_socket(request.url) as socket:
                    await socket.send_text(request.message())
                    await _wait_subscribed(socket)
                    backoff.reset()
                    connection.subscribed.set()
                    if connection.interruptions == 0:
                        task_status.started()
                    await _forward(socket, decode, batches, connection)
            except _CONNECTION_LOST as error:
                if not connection.subscribed.is_set():
                    if connection.interruptions == 0:
                        raise ServiceError(None, "unreachable", f"no feed at {request.url}: {error}") from None
                else:
                    connection.subscribed = trio.Event()
                    connection.interruptions += 1
                    log.warning("feed_interrupted url=%s reason=%s", request.url, error)
                    try:
                        await batches.send(_Lost(str(error)))
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        return  # the reader closed its end: nobody to feed
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            await trio.sleep(backoff.next_delay())


async def _wait_subscribed(socket: StreamSocket) -> None:
    while True:
        for message in await socket.receive_batch():
            reply = orjson.loads(message)
            if reply.get("op") == "subscribed":
                return
            if reply.get("op") == "error":
                raise ServiceError(None, str(reply.get("code")), str(reply.get("message")))


async def _forward(
    socket: StreamSocket, decode: Callable[[object], list[T]], batches: trio.MemorySendChannel[list[T] | _Lost],
    connection: _Connection,
) -> None:
    while True:
        for message in await socket.receive_batch():
            document = api_json(message)
            if "channel" in document:
                await batches.send(decode(document["data"]))
            elif document.get("op") == "gap":
                gap = api_converter.structure({k: v for k, v in document.items() if k != "op"}, Gap)
                connection.gaps.append(gap)
                log.warning("feed_gap symbol=%s first_trade_id=%d last_trade_id=%d reason=%s", gap.symbol,
                            gap.first_trade_id, gap.last_trade_id, gap.reason)
            elif document.get("op") == "error":
                log.warning("feed_error code=%s message=%s", document.get("code"), document.get("message"))


__all__ = ["Client", "Feed", "FeedInterrupted", "ServiceError", "feed_url", "open_feed"]
