"""The /ws protocol's pure parts: client message -> request or precise error, and subscription state."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.web.feed_protocol import (
    MAX_ID_LENGTH,
    ClientError,
    Request,
    SourceChange,
    Subscriptions,
    acknowledgement,
    parse_request,
)

INTERVALS = ("1m", "5m")
SERVED = ("BTCUSDT", "ETHUSDT", "BNBUSDT")


def parse(message: str | bytes) -> Request:
    return parse_request(message, INTERVALS, lambda: SERVED)


def error_of(message: str | bytes) -> ClientError:
    with pytest.raises(ClientError) as raised:
        parse(message)
    return raised.value


def test_a_subscribe_message_becomes_a_request_with_upper_case_symbols_once_each() -> None:
    request = parse('{"op": "subscribe", "channel": "candles", "symbols": ["ethusdt", "BTCUSDT", "ETHUSDT"],'
                    ' "interval": "5m", "id": "a"}')
    assert request == Request("subscribe", "candles", ("ETHUSDT", "BTCUSDT"), "5m", "a")
    assert parse('{"op": "unsubscribe", "channel": "ticks", "symbols": "*"}') == Request("unsubscribe", "ticks")
    assert parse('{"op": "ping", "id": 3}') == Request("ping", request_id=3)
    assert parse('{"op": "list"}') == Request("list")


def test_unsubscribing_a_symbol_no_longer_served_is_allowed() -> None:
    request = parse('{"op": "unsubscribe", "channel": "ticks", "symbols": ["SOLUSDT"]}')
    assert request.symbols == ("SOLUSDT",)
    assert error_of('{"op": "subscribe", "channel": "ticks", "symbols": ["SOLUSDT"]}').code == "unknown_symbol"


def test_errors_echo_a_valid_id_and_drop_an_invalid_one() -> None:
    error = error_of('{"op": "subscribe", "channel": "trades", "symbols": "*", "id": 9}')
    assert error.reply() == {"op": "error", "code": "unknown_channel", "id": 9,
                             "message": "unknown channel 'trades'; expected ticks or candles"}
    too_long = error_of(json.dumps({"op": "ping", "id": "x" * (MAX_ID_LENGTH + 1)}))
    assert too_long.code == "invalid_message" and "id" not in too_long.reply()
    assert "id" not in error_of('{"op": "ping", "id": true}').reply()


def test_the_message_names_what_is_wrong() -> None:
    assert error_of('{"op": "subscribe", "channel": "candles", "symbols": "*", "interval": "7m"}').message == (
        "unknown interval '7m'; configured: 1m, 5m")
    assert error_of('{"op": "subscribe", "channel": "ticks", "symbols": ["*"], "depth": 5, "x": 1}').message == (
        "unknown field(s): 'depth, x'")
    assert error_of('{"op": "subscribe", "channel": "ticks", "symbols": ["SOLUSDT", "BTCUSDT"]}').message == (
        "not served: SOLUSDT; served: BNBUSDT, BTCUSDT, ETHUSDT")


JSON_TEXT = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=200)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet="abcdefghijklmnopqrstuvwxyz*BTCUSD1 ", max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["op", "channel", "symbols", "interval", "id", "other"]), children, max_size=5),
    max_leaves=12,
)


@given(st.one_of(JSON_TEXT, JSON_VALUES.map(json.dumps), st.binary(max_size=50)))
def test_any_message_is_a_request_or_a_client_error_and_never_anything_else(message: str | bytes) -> None:
    try:
        request = parse(message)
    except ClientError as error:
        assert error.code and error.message and len(error.message) < 1_000
        return
    assert request.op in ("subscribe", "unsubscribe", "list", "ping")
    if request.op in ("subscribe", "unsubscribe"):
        assert request.channel in ("ticks", "candles")
        assert (request.interval in INTERVALS) == (request.channel == "candles")
        if request.symbols is not None:
            assert request.symbols and len(set(request.symbols)) == len(request.symbols)
            assert all(symbol == symbol.upper() for symbol in request.symbols)
            if request.op == "subscribe":
                assert set(request.symbols) <= set(SERVED)


def ticks(op: str, *symbols: str) -> Request:
    return Request(op, "ticks", symbols or None)


def test_subscriptions_report_the_source_change_each_request_needs() -> None:
    subscriptions = Subscriptions(limit=10)
    assert subscriptions.apply(ticks("subscribe", "BTCUSDT")) == SourceChange("ticks", None, frozenset({"BTCUSDT"}))
    assert subscriptions.apply(ticks("subscribe", "BTCUSDT")) is None  # nothing new
    assert subscriptions.apply(ticks("subscribe", "ETHUSDT")) == SourceChange(
        "ticks", None, frozenset({"BTCUSDT", "ETHUSDT"}))
    assert subscriptions.apply(ticks("subscribe")) == SourceChange("ticks", None, None)  # "*"
    assert subscriptions.apply(ticks("unsubscribe")) == SourceChange("ticks", None, frozenset())  # ended
    assert subscriptions.apply(Request("subscribe", "candles", None, "1m")) == SourceChange("candles", "1m", None)
    assert subscriptions.listing(4) == {"op": "subscriptions", "ticks": [], "candles": {"1m": ["*"]}, "id": 4}
    assert subscriptions.apply(Request("unsubscribe", "candles", None, "1m")) == SourceChange(
        "candles", "1m", frozenset())
    assert subscriptions.listing() == {"op": "subscriptions", "ticks": [], "candles": {}}
    assert subscriptions.apply(Request("unsubscribe", "candles", ("BTCUSDT",), "5m")) is None


def test_unsubscribing_one_symbol_from_star_is_refused_and_changes_nothing() -> None:
    subscriptions = Subscriptions(limit=10)
    subscriptions.apply(ticks("subscribe"))
    with pytest.raises(ClientError) as raised:
        subscriptions.apply(Request("unsubscribe", "ticks", ("BTCUSDT",), request_id="u1"))
    assert (raised.value.code, raised.value.request_id) == ("invalid_request", "u1")
    assert subscriptions.ticks.everything


def test_the_subscription_limit_counts_symbols_per_channel_and_refuses_the_whole_request() -> None:
    subscriptions = Subscriptions(limit=3)
    subscriptions.apply(ticks("subscribe", "BTCUSDT", "ETHUSDT"))
    subscriptions.apply(Request("subscribe", "candles", ("BTCUSDT",), "1m"))
    assert subscriptions.count == 3
    with pytest.raises(ClientError) as raised:
        subscriptions.apply(Request("subscribe", "candles", ("ETHUSDT", "BNBUSDT"), "5m", 1))
    assert raised.value.code == "too_many_subscriptions" and raised.value.request_id == 1
    assert "at most 3 subscriptions per connection" in raised.value.message and "would make 5" in raised.value.message
    assert subscriptions.count == 3 and "5m" not in subscriptions.candles
    # "*" counts one: trading two symbols for every symbol is allowed, and so is anything that shrinks.
    assert subscriptions.apply(ticks("subscribe")) == SourceChange("ticks", None, None)
    assert subscriptions.count == 2
    subscriptions.apply(ticks("unsubscribe"))
    assert subscriptions.count == 1


REQUESTS = st.builds(
    Request,
    op=st.sampled_from(["subscribe", "unsubscribe"]),
    channel=st.just("ticks"),
    symbols=st.none() | st.lists(st.sampled_from(SERVED), min_size=1, max_size=3, unique=True).map(tuple),
)


@given(st.lists(REQUESTS, max_size=20))
def test_the_tick_selection_follows_a_set_reference_and_each_change_says_the_new_filter(
    requests: list[Request],
) -> None:
    subscriptions = Subscriptions(limit=100)
    everything, symbols = False, set[str]()
    source: frozenset[str] | None = frozenset()
    for request in requests:
        try:
            change = subscriptions.apply(request)
        except ClientError as error:
            assert error.code == "invalid_request" and everything and request.symbols is not None
            continue
        if request.op == "subscribe":
            everything, symbols = (True, set()) if request.symbols is None or everything else (
                False, symbols | set(request.symbols))
        else:
            everything, symbols = (False, set()) if request.symbols is None else (False, symbols - set(request.symbols))
        expected: frozenset[str] | None = None if everything else frozenset(symbols)
        assert (change is None) == (expected == source)
        if change is not None:
            assert change.symbols == expected
            source = expected
        assert subscriptions.ticks.everything == everything and subscriptions.ticks.symbols == symbols
        assert subscriptions.count == (1 if everything else len(symbols))


def test_acknowledgements_echo_what_was_asked() -> None:
    assert acknowledgement(Request("subscribe", "candles", ("BTCUSDT",), "1m", 2)) == {
        "op": "subscribed", "channel": "candles", "symbols": ["BTCUSDT"], "interval": "1m", "id": 2}
    assert acknowledgement(ticks("unsubscribe")) == {"op": "unsubscribed", "channel": "ticks", "symbols": ["*"]}
