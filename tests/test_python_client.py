"""The typed client (Client, open_feed) against the embedded service's real HTTP server on loopback."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from functools import partial

import pytest
import trio

from app import Client, FeedInterrupted, MarketData, ServiceError, Tick, open_feed
from app.testing import SimulatedExchange

T0_MS = 1_723_161_240_000  # 2024-08-08 23:54:00 UTC

pytestmark = pytest.mark.marketdata_service(http=True)


async def publish(exchange: SimulatedExchange, count: int, symbol: str = "BTCUSDT") -> list[Tick]:
    return [await exchange.publish_trade(symbol, price=f"6{i}000.01", quantity="0.00012345",
                                         trade_time=T0_MS + i) for i in range(count)]


async def publish_and_settle(md: MarketData, exchange: SimulatedExchange, count: int) -> list[Tick]:
    """Publishes ``count`` trades and returns once the service has the last one and its candle."""
    async with md.subscribe_candles(["BTCUSDT"], "1m") as candles:
        published = await publish(exchange, count)
        async for updates in candles:
            if any(candle.last_trade_id == published[-1].trade_id for candle in updates):
                break
    assert md.latest("BTCUSDT") == published[-1]
    return published


async def test_the_rest_api_as_typed_methods(binance_simulator: SimulatedExchange,
                                            marketdata_service: MarketData) -> None:
    md = marketdata_service
    with trio.fail_after(20):
        published = await publish_and_settle(md, binance_simulator, 3)
        async with Client(md.http_url) as client:
            assert await client.tick("btcusdt") == published[-1]  # exact: 62000.01, 0.00012345
            assert await client.ticks() == {"BTCUSDT": published[-1]}
            assert await client.candles("BTCUSDT", "1m") == await md.candles("BTCUSDT", "1m")
            assert await client.candles("BTCUSDT", "1m", start=T0_MS + 60_000) == []
            rows = {row.symbol: row for row in await client.symbols()}
            assert rows["BTCUSDT"].last_trade_id == 3 and rows["BTCUSDT"].last_trade_time_ms == T0_MS + 2
            assert rows["BTCUSDT"].trading_status == "TRADING" and rows["ETHUSDT"].last_trade_id is None
            health = await client.health()
            assert health.ok and health.ticks_published == 3 and health.reasons == ()
            with pytest.raises(ServiceError) as no_data:
                await client.tick("ETHUSDT")
            with pytest.raises(ServiceError) as interval:
                await client.candles("BTCUSDT", "7m")
            with pytest.raises(ServiceError) as unknown:
                await client.add_symbol("SOLUSDT")
    assert (no_data.value.status, no_data.value.code) == (404, "no_data")
    assert (interval.value.status, interval.value.code) == (400, "unknown_interval")
    assert (unknown.value.status, unknown.value.code) == (422, "unknown_symbol")
    assert "not configured" in interval.value.message or "unknown interval" in interval.value.message


async def test_an_unreachable_service_is_a_service_error() -> None:
    with trio.fail_after(10):
        listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
        port = listener.socket.getsockname()[1]
        await listener.aclose()  # nothing listens there now
        async with Client(f"http://127.0.0.1:{port}") as client:
            with pytest.raises(ServiceError) as error:
                await client.health()
    assert error.value.code == "unreachable" and error.value.status is None


async def test_the_client_works_under_asyncio_too(binance_simulator: SimulatedExchange,
                                                  marketdata_service: MarketData) -> None:
    with trio.fail_after(20):
        published = await publish_and_settle(marketdata_service, binance_simulator, 1)

    async def under_asyncio(url: str) -> Tick:
        async with Client(url) as client:
            return await asyncio.wait_for(client.tick("BTCUSDT"), 10)

    with trio.fail_after(20):
        tick = await trio.to_thread.run_sync(asyncio.run, under_asyncio(marketdata_service.http_url))
    assert tick == published[0]


class Proxy:
    """A loopback TCP proxy whose connections the test can drop (the service itself keeps running)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._connections: list[trio.CancelScope] = []
        self.accepted = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(trio.serve_listeners, self._relay, listeners))
            task_status.started()

    async def _relay(self, client: trio.SocketStream) -> None:
        self.accepted += 1
        with trio.CancelScope() as scope:
            self._connections.append(scope)
            async with client, await trio.open_tcp_stream("127.0.0.1", self.target_port) as server:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_pipe, client, server)
                    nursery.start_soon(_pipe, server, client)

    def reset(self) -> None:
        for scope in self._connections:
            scope.cancel()
        self._connections.clear()


async def _pipe(source: trio.SocketStream, sink: trio.SocketStream) -> None:
    async for data in source:
        await sink.send_all(data)


async def test_the_feed_gives_typed_batches_and_reports_an_interruption(
    binance_simulator: SimulatedExchange, marketdata_service: MarketData
) -> None:
    md = marketdata_service
    port = int(md.http_url.rsplit(":", 1)[1])
    proxy = Proxy(port)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(proxy.run)
            async with open_feed(f"http://127.0.0.1:{proxy.port}", symbols=["BTCUSDT"]) as feed:
                first = await publish(binance_simulator, 2)
                got: list[Tick] = []
                while len(got) < 2:
                    got += await feed.__anext__()
                assert got == first and got[0].price == Decimal("60000.01")
                proxy.reset()
                with pytest.raises(FeedInterrupted) as interrupted:
                    await feed.__anext__()
                assert interrupted.value.last_trade_ids == {"BTCUSDT": 2}
                await feed.wait_subscribed()
                later = await publish(binance_simulator, 1)
                assert await feed.__anext__() == later
            nursery.cancel_scope.cancel()
    assert proxy.accepted == 2 and feed.interruptions == 1


async def test_candle_feed_and_a_refused_subscription(binance_simulator: SimulatedExchange,
                                                      marketdata_service: MarketData) -> None:
    url = marketdata_service.http_url
    with trio.fail_after(20):
        await publish_and_settle(marketdata_service, binance_simulator, 2)
        async with open_feed(url, "candles", ["BTCUSDT"], "1m") as candles:
            [opened] = await candles.__anext__()
        with pytest.raises(ServiceError) as refused:
            async with open_feed(url, "candles", ["BTCUSDT"], "7m"):
                pass
    assert opened == (await marketdata_service.candles("BTCUSDT", "1m"))[-1] and not opened.closed
    assert refused.value.code == "unknown_interval"


@pytest.mark.marketdata_service(http=True, admin_token="a-token-of-16-chars-or-more")
async def test_the_admin_token_is_sent_as_a_bearer_token(marketdata_service: MarketData) -> None:
    url = marketdata_service.http_url
    with trio.fail_after(20):
        async with Client(url) as anonymous, Client(url, token="a-token-of-16-chars-or-more") as admin:
            with pytest.raises(ServiceError) as refused:
                await anonymous.remove_symbol("ETHUSDT")
            await admin.remove_symbol("ETHUSDT")
    assert (refused.value.status, refused.value.code) == (401, "missing_token")
    assert marketdata_service.symbols() == ("BTCUSDT",)
