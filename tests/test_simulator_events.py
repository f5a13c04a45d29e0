"""Recorded frames into events: combined and raw layouts, exact bytes, streams of non-trade events."""

from __future__ import annotations

from app.convert import parse_trade_frame
from app.replay.events import event_from_frame, trade_event

COMBINED = ('{"stream":"btcusdt@trade","data":{"e":"trade","E":1723161255343,"s":"BTCUSDT","t":3735683259,'
            '"p":"61837.63000000","q":"0.02000000","T":1723161255342,"m":true,"M":true}}')
RAW = COMBINED[len('{"stream":"btcusdt@trade","data":') : -1]


def test_combined_frame_keeps_its_bytes_and_yields_the_raw_payload() -> None:
    event = event_from_frame(COMBINED)
    assert event is not None
    assert (event.stream, event.combined, event.raw) == ("btcusdt@trade", COMBINED, RAW)
    assert event.tick == parse_trade_frame(COMBINED)


def test_raw_frame_gets_its_stream_and_a_combined_layout() -> None:
    event = event_from_frame(RAW)
    assert event is not None
    assert (event.stream, event.raw, event.combined) == ("btcusdt@trade", RAW, COMBINED)


def test_rendered_trade_equals_binances_text() -> None:
    event = event_from_frame(COMBINED)
    assert event is not None and event.tick is not None
    assert trade_event(event.tick).combined == COMBINED


def test_streams_of_other_raw_events() -> None:
    frames = {
        '{"e":"aggTrade","E":1,"s":"LRCBTC","a":1,"p":"1","q":"1","f":1,"l":1,"T":1,"m":false,"M":true}':
            "lrcbtc@aggTrade",
        '{"e":"kline","E":1,"s":"LRCBTC","k":{"i":"1m"}}': "lrcbtc@kline_1m",
        '{"e":"depthUpdate","E":1,"s":"NKNUSDT","U":1,"u":2,"b":[],"a":[]}': "nknusdt@depth",
        '{"u":1,"s":"BLZETH","b":"1","B":"1","a":"2","A":"1"}': "blzeth@bookTicker",
    }
    for frame, stream in frames.items():
        event = event_from_frame(frame)
        assert event is not None and event.stream == stream and event.tick is None


def test_unknown_frames_are_skipped() -> None:
    assert event_from_frame("not json") is None
    assert event_from_frame("[1,2]") is None
    assert event_from_frame('{"e":"mystery"}') is None
