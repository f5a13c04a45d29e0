"""The issue's example user test, as written: the fixtures come from the installed pytest plugin (no import)."""


async def test_my_strategy_sees_every_trade(binance_simulator, marketdata_service):
    async with marketdata_service.subscribe(["BTCUSDT"]) as ticks:
        for i in range(5):
            await binance_simulator.publish_trade("BTCUSDT", price=f"100.{i}", quantity="1")
        binance_simulator.reset_connections()
        await binance_simulator.publish_trade("BTCUSDT", price="101", quantity="2")
        got = []
        async for batch in ticks:
            got += batch
            if len(got) == 6:
                break
    assert [str(t.price) for t in got] == ["100.0", "100.1", "100.2", "100.3", "100.4", "101"]
