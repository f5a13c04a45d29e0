"""/metrics through a real socket: Prometheus text built from the tasks' plain counters at scrape time."""

from __future__ import annotations

import json

import httpx
import trio
from prometheus_client.parser import text_string_to_metric_families
from trio_websocket import open_websocket_url
from web_harness import make_ticks, running_web

from app.ingest.status import ConnectionStatus


async def scrape(client: httpx.AsyncClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


async def test_metrics_reflect_ingest_store_and_feed_counters() -> None:
    with trio.fail_after(20):
        async with running_web() as web, httpx.AsyncClient(base_url=web.base_url) as client:
            ingest = web.state.ingest
            btc = ingest.symbol("BTCUSDT")
            btc.ticks_received, btc.ticks_emitted, btc.gaps_found, btc.gaps_repaired = 120, 118, 3, 2
            btc.trades_backfilled = 40
            ingest.parse_errors = 7
            ingest.disconnects, ingest.last_id_checks, ingest.last_id_checks_failed = 3, 5, 1
            ingest.connections["shard-0"] = ConnectionStatus("shard-0", "ws://x", 2, True, trio.current_time(), 4,
                                                             read_ahead_bytes=65_536)
            await web.publish_and_settle(make_ticks("BTCUSDT", 1, 150, step_ms=1000))
            async with open_websocket_url(web.ws_url, disconnect_timeout=5) as ws:
                await ws.send_message('{"op": "subscribe", "channel": "ticks", "symbols": "*"}')
                await ws.get_message()
                await ws.send_message("not json")
                await ws.get_message()
                await web.publish(make_ticks("BTCUSDT", 151, 5, start_ms=1_723_161_450_000))
                received = frames = 0
                while received < 5:
                    received += len(json.loads(await ws.get_message())["data"])
                    frames += 1
                samples = await scrape(client)
    btc_label = (("symbol", "BTCUSDT"),)
    assert samples[("marketdata_ticks_received_total", btc_label)] == 120
    assert samples[("marketdata_ticks_emitted_total", btc_label)] == 118
    assert samples[("marketdata_gaps_found_total", btc_label)] == 3
    assert samples[("marketdata_gaps_repaired_total", btc_label)] == 2
    assert samples[("marketdata_backfilled_trades_total", btc_label)] == 40
    assert samples[("marketdata_parse_errors_total", ())] == 7
    assert samples[("marketdata_disconnects_total", ())] == 3
    assert samples[("marketdata_last_id_checks_total", ())] == 5
    assert samples[("marketdata_last_id_checks_failed_total", ())] == 1
    assert samples[("marketdata_reconnects_total", (("connection", "shard-0"),))] == 4
    assert samples[("marketdata_connection_up", (("connection", "shard-0"),))] == 1
    assert samples[("marketdata_connection_read_ahead_bytes", (("connection", "shard-0"),))] == 65_536
    assert samples[("marketdata_ticks_published_total", ())] == 155
    # 150 one-second trades from 23:55:00: two 1m candles closed.
    assert samples[("marketdata_candles_closed_total", ())] == 2
    assert samples[("marketdata_candle_revisions_total", ())] == 0
    assert samples[("marketdata_subscribers_cut_off_total", (("stage", "websocket"),))] == 0
    assert samples[("marketdata_websocket_connections", ())] == 1
    assert samples[("marketdata_websocket_messages_rejected_total", ())] == 1
    assert samples[("marketdata_websocket_items_sent_total", (("channel", "ticks"),))] == 5
    assert samples[("marketdata_websocket_frames_sent_total", (("channel", "ticks"),))] == frames
    assert samples[("marketdata_end_to_end_lag_seconds_count", ())] == frames
    assert samples[("marketdata_end_to_end_lag_seconds_sum", ())] > 0
    assert samples[("marketdata_channel_capacity", (("channel", "aggregator"),))] == 256
    assert ("marketdata_channel_depth", (("channel", "aggregator"),)) in samples
    assert samples[("marketdata_healthy", ())] == 1


async def test_every_per_symbol_counter_reads_its_own_status_field() -> None:
    fields = {  # metric -> the SymbolStatus field it reports, each given a different value
        "ticks_received": "ticks_received", "ticks_emitted": "ticks_emitted",
        "duplicate_ticks_dropped": "duplicates_dropped", "gaps_found": "gaps_found",
        "gaps_repaired": "gaps_repaired", "backfilled_trades": "trades_backfilled",
        "gaps_unrepaired": "gaps_unrepaired", "trades_lost": "trades_lost",
    }
    with trio.fail_after(20):
        async with running_web() as web, httpx.AsyncClient(base_url=web.base_url) as client:
            eth = web.state.ingest.symbol("ETHUSDT")
            for value, field in enumerate(fields.values(), start=11):
                setattr(eth, field, value)
            samples = await scrape(client)
    reported = {metric: samples[(f"marketdata_{metric}_total", (("symbol", "ETHUSDT"),))] for metric in fields}
    assert reported == {metric: value for value, metric in enumerate(fields, start=11)}


async def test_two_services_in_one_process_keep_their_own_metrics() -> None:
    # Each app has its own registry: a global one would refuse the second app's collector.
    with trio.fail_after(20):
        async with running_web() as first, running_web() as second:
            await first.publish_and_settle(make_ticks("BTCUSDT", 1, 3))
            async with httpx.AsyncClient(base_url=first.base_url) as client:
                first_samples = await scrape(client)
            async with httpx.AsyncClient(base_url=second.base_url) as client:
                second_samples = await scrape(client)
    assert first_samples[("marketdata_ticks_published_total", ())] == 3
    assert second_samples[("marketdata_ticks_published_total", ())] == 0
