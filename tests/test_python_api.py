"""The embedded service (open_service and its handle), against the simulator through the plugin's fixtures."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
import trio
from test_ingest_support import make_ticks

from app import MarketData, ServiceError, Settings, Subscription, SubscriptionCutOff, Tick, open_service
from app.replay.events import combine, trade_payload
from app.store.sqlite import SQLiteStorage
from app.testing import (
    RecordedFrame,
    RecordingHeader,
    RecordingReader,
    SimulatedExchange,
    exchange_config,
    open_simulated_exchange,
    read_recording,
    write_recording,
)

T0_MS = 1_723_161_240_000  # 2024-08-08 23:54:00 UTC, a minute boundary


async def publish(exchange: SimulatedExchange, symbol: str, count: int, first_price: int = 100) -> list[Tick]:
    return [await exchange.publish_trade(symbol, price=f"{first_price + i}.5", quantity="0.25",
                                         trade_time=T0_MS + i * 1000) for i in range(count)]


async def receive(ticks: Subscription[Tick], count: int) -> list[Tick]:
    got: list[Tick] = []
    async for batch in ticks:
        got += batch
        if len(got) >= count:
            break
    return got


async def test_latest_candles_and_subscriptions(binance_simulator: SimulatedExchange,
                                                marketdata_service: MarketData) -> None:
    md = marketdata_service
    assert md.latest("BTCUSDT") is None
    async with md.subscribe(["BTCUSDT", "ETHUSDT"]) as ticks, md.subscribe_candles(["BTCUSDT"], "1m") as candles:
        published = await publish(binance_simulator, "BTCUSDT", 3) + await publish(binance_simulator, "ETHUSDT", 2)
        got = await receive(ticks, 5)
        updates = []
        async for batch in candles:  # until the aggregator has the third trade
            updates += batch
            if batch[-1].last_trade_id == 3:
                break
    assert got == published  # exact decimals, ids, times: the same attrs objects' values
    assert {candle.symbol for candle in updates} == {"BTCUSDT"} and not updates[-1].closed
    assert md.latest("btcusdt") == published[2]
    assert md.latest_all() == {"BTCUSDT": published[2], "ETHUSDT": published[4]}
    [candle] = await md.candles("BTCUSDT", "1m", limit=10)
    assert (candle.open, candle.high, candle.close, candle.volume) == (
        Decimal("100.5"), Decimal("102.5"), Decimal("102.5"), Decimal("0.75"))
    assert candle.trade_count == 3 and candle.first_trade_id == 1 and candle.last_trade_id == 3
    assert await md.candles("BTCUSDT", "1m", start=T0_MS + 60_000) == []


async def test_the_rules_of_the_http_api_with_its_codes(marketdata_service: MarketData) -> None:
    md = marketdata_service
    with pytest.raises(ServiceError) as interval:
        await md.candles("BTCUSDT", "7m")
    assert (interval.value.status, interval.value.code) == (400, "unknown_interval")
    with pytest.raises(ServiceError) as limit:
        await md.candles("BTCUSDT", "1m", limit=1001)
    assert limit.value.code == "invalid_limit"
    with pytest.raises(ServiceError) as symbol:
        async with md.subscribe(["not a symbol"]):
            pass
    assert symbol.value.code == "invalid_symbol"
    with pytest.raises(ServiceError) as unknown:
        await md.add_symbol("SOLUSDT")  # the simulator does not list it
    assert (unknown.value.status, unknown.value.code) == (422, "unknown_symbol")
    with pytest.raises(ServiceError) as twice:
        await md.add_symbol("BTCUSDT")
    assert twice.value.code == "already_subscribed"
    with pytest.raises(RuntimeError, match="http=True"):
        _ = md.http_url


@pytest.mark.binance_simulator(symbols=("BTCUSDT", "ETHUSDT", "SOLUSDT"))
@pytest.mark.marketdata_service(symbols=("BTCUSDT",))
async def test_symbols_added_and_removed_live(binance_simulator: SimulatedExchange,
                                             marketdata_service: MarketData) -> None:
    md = marketdata_service
    await md.add_symbol("solusdt")
    assert md.symbols() == ("BTCUSDT", "SOLUSDT")
    async with md.subscribe(["SOLUSDT"]) as ticks:
        published = await publish(binance_simulator, "SOLUSDT", 2)
        assert await receive(ticks, 2) == published
    await md.remove_symbol("SOLUSDT")
    assert md.symbols() == ("BTCUSDT",)
    with pytest.raises(ServiceError) as gone:
        await md.remove_symbol("SOLUSDT")
    assert gone.value.code == "not_subscribed"


async def test_a_reader_that_falls_behind_is_cut_off_with_the_reason(binance_simulator: SimulatedExchange,
                                                                     marketdata_service: MarketData) -> None:
    md = marketdata_service
    async with md.subscribe(["*"], buffer=1) as ticks, md.subscribe(["BTCUSDT"]) as witness:
        # Each trade is its own frame and batch; the subscription holds one batch and is not read meanwhile.
        for count in range(1, 4):
            await publish(binance_simulator, "BTCUSDT", 1, first_price=count)
            await receive(witness, 1)
        with pytest.raises(SubscriptionCutOff, match="buffer of 1 batches was full"):
            await receive(ticks, 3)


async def test_leaving_the_block_drains_the_pipeline_even_when_cancelled(
    binance_simulator: SimulatedExchange, tmp_path: Path
) -> None:
    path = tmp_path / "md.sqlite3"
    settings = Settings(symbols=("BTCUSDT",), binance_ws_url=binance_simulator.ws_url,
                        binance_rest_url=binance_simulator.rest_url, database_url=f"sqlite:///{path}")
    with trio.CancelScope() as outer:
        async with open_service(settings) as md:
            await binance_simulator.wait_subscribed(["BTCUSDT"])
            async with md.subscribe(["BTCUSDT"]) as ticks:
                published = await publish(binance_simulator, "BTCUSDT", 4)
                await receive(ticks, 4)
            outer.cancel()
            await trio.sleep_forever()
    assert outer.cancelled_caught
    # Written before the service stopped: the writer's batch was drained, not dropped.
    storage = await SQLiteStorage.open(str(path))
    try:
        assert await storage.last_trade_ids() == {"BTCUSDT": published[-1].trade_id}
        assert await storage.ticks("BTCUSDT", 0, 0, 10) == published
    finally:
        await storage.close()


@pytest.mark.binance_simulator(recording="demo-binance-2024-08-08", speed=0)
async def test_a_recording_chosen_with_the_marker(binance_simulator: SimulatedExchange,
                                                  marketdata_service: MarketData) -> None:
    assert binance_simulator.symbols == ("BTCUSDT", "ETHUSDT")
    await binance_simulator.simulator.wait_source_done()
    last = binance_simulator.published("BTCUSDT")[-1]
    with trio.fail_after(30):
        async with marketdata_service.subscribe(["BTCUSDT"]) as ticks:
            while (tick := marketdata_service.latest("BTCUSDT")) is None or tick.trade_id < last.trade_id:
                await ticks.__anext__()
    assert marketdata_service.latest("BTCUSDT") == last


async def test_malformed_frames_lose_nothing(binance_simulator: SimulatedExchange,
                                             marketdata_service: MarketData) -> None:
    async with marketdata_service.subscribe(["BTCUSDT"]) as ticks:
        before = await publish(binance_simulator, "BTCUSDT", 2)
        binance_simulator.send_malformed(3)
        after = await publish(binance_simulator, "BTCUSDT", 2, first_price=200)
        assert await receive(ticks, 4) == before + after
    assert binance_simulator.simulator.stats.malformed_sent == 3
    assert binance_simulator.published("BTCUSDT") == before + after


async def test_a_recording_written_with_the_helpers_is_replayed(tmp_path: Path) -> None:
    frames = [
        RecordedFrame(recv_ns=(T0_MS + i) * 1_000_000, frame=combine("btcusdt@trade", trade_payload(tick)))
        for i, tick in enumerate(make_ticks("BTCUSDT", 7, 3, T0_MS))
    ]
    header = RecordingHeader(source="test", symbols=("BTCUSDT",), started_at="2024-08-08T23:54:00.000+00:00",
                             synthetic=True)
    path = tmp_path / "three.rec.zst"
    assert write_recording(path, header, frames) == 3
    assert read_recording(path) == (header, frames)
    with RecordingReader(path) as reader:
        assert [frame.recv_ns for frame in reader.frames()] == [frame.recv_ns for frame in frames]
    with trio.fail_after(20):
        async with open_simulated_exchange(exchange_config(recording=path)) as exchange:
            await exchange.simulator.wait_source_done()
            assert exchange.published("BTCUSDT") == make_ticks("BTCUSDT", 7, 3, T0_MS)
