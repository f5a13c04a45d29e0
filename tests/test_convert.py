"""The converter: Binance frames -> ticks, model -> API JSON, exactly."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import cattrs
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.convert import (
    FrameError,
    _checked_trade,
    decimal_text,
    iso_utc,
    parse_trade_frame,
    to_json,
    trade_converter,
    trade_from_payload,
    trade_from_rest,
)
from app.model import Candle, Tick, ms_from_utc, utc_from_ms


def structure_trade(payload: Mapping[str, Any]) -> Tick:
    """The reference: cattrs structuring of a ``@trade`` payload with the project's trade converter; its errors
    are ``FrameError``s too (the hand-written parser must agree with it)."""
    if not isinstance(payload, Mapping) or payload.get("e") != "trade":
        raise FrameError("not a trade event")
    try:
        tick = trade_converter.structure(payload, Tick)
    except cattrs.BaseValidationError as error:
        reasons = "; ".join(cattrs.transform_error(error, path="trade", format_exception=_describe_error))
        raise FrameError(f"invalid trade: {reasons}") from None
    if not tick.symbol or not tick.symbol.isalnum() or not tick.symbol.isupper():
        raise FrameError(f"field 's' must be an upper-case symbol, got {tick.symbol!r}")
    return tick


def _describe_error(error: BaseException, expected: type | None) -> str:
    if isinstance(error, FrameError):
        return error.reason
    return cattrs.v.format_exception(error, expected)

REAL_FRAME = (
    '{"stream":"btcusdt@trade","data":{"e":"trade","E":1723161255343,"s":"BTCUSDT","t":3735683259,'
    '"p":"61837.63000000","q":"0.02000000","T":1723161255342,"m":true,"M":true}}'
)

# Binance prints prices and quantities with 8 decimals; allow up to 18 integer digits.
binance_decimals = st.decimals(
    min_value=Decimal("0.00000001"), max_value=Decimal("999999999999999999"), places=8,
    allow_nan=False, allow_infinity=False,
).map(lambda value: f"{value:.8f}")

epoch_ms = st.integers(min_value=0, max_value=4_102_444_800_000)  # up to 2100


def trade_payload(price: str, quantity: str, trade_id: int, trade_time: int, buyer_is_maker: bool) -> dict[str, object]:
    return {"e": "trade", "E": trade_time + 1, "s": "ETHUSDT", "t": trade_id, "p": price, "q": quantity,
            "T": trade_time, "m": buyer_is_maker, "M": True}


def test_real_frame_parses_exactly() -> None:
    tick = parse_trade_frame(REAL_FRAME)
    assert tick == Tick(
        symbol="BTCUSDT", price=Decimal("61837.63"), quantity=Decimal("0.02"), trade_time_ms=1723161255342,
        event_time_ms=1723161255343, trade_id=3735683259, is_buyer_maker=True,
    )
    assert tick.trade_time == datetime(2024, 8, 8, 23, 54, 15, 342000, tzinfo=UTC)


def test_tick_json_has_exact_numbers_and_utc_times() -> None:
    body = to_json(parse_trade_frame(REAL_FRAME))
    assert body == (
        b'{"symbol":"BTCUSDT","price":61837.63,"quantity":0.02,"timestamp":"2024-08-08T23:54:15.342+00:00",'
        b'"event_time":"2024-08-08T23:54:15.343+00:00","trade_id":3735683259,"is_buyer_maker":true}'
    )


def test_price_that_floats_would_corrupt_is_served_exactly() -> None:
    tick = parse_trade_frame(REAL_FRAME.replace("61837.63000000", "95234.56000000"))
    assert b'"price":95234.56,' in to_json(tick)
    decoded = json.loads(to_json(tick), parse_float=Decimal)
    assert decoded["price"] == Decimal("95234.56")


@given(text=binance_decimals)
def test_any_binance_decimal_round_trips_through_the_api(text: str) -> None:
    tick = trade_from_payload(trade_payload(text, text, 1, 0, False))
    assert tick.price == Decimal(text)
    served = json.loads(to_json(tick), parse_float=Decimal, parse_int=Decimal)
    assert served["price"] == Decimal(text)
    assert served["quantity"] == Decimal(text)


@given(
    price=binance_decimals, quantity=binance_decimals, trade_id=st.integers(0, 2**62),
    trade_time=epoch_ms, buyer_is_maker=st.booleans(),
)
def test_hot_path_parser_agrees_with_cattrs_converter(
    price: str, quantity: str, trade_id: int, trade_time: int, buyer_is_maker: bool
) -> None:
    payload = trade_payload(price, quantity, trade_id, trade_time, buyer_is_maker)
    assert trade_from_payload(payload) == structure_trade(payload)


@given(value=st.decimals(allow_nan=False, allow_infinity=False))
def test_decimal_text_is_plain_and_exact(value: Decimal) -> None:
    text = decimal_text(value)
    assert "E" not in text and "e" not in text
    assert Decimal(text) == value
    if "." in text:
        assert not text.endswith("0")


@given(moment=epoch_ms)
def test_epoch_ms_and_utc_datetimes_round_trip(moment: int) -> None:
    as_datetime = utc_from_ms(moment)
    assert as_datetime.tzinfo is UTC
    assert ms_from_utc(as_datetime) == moment
    assert datetime.fromisoformat(iso_utc(moment)) == as_datetime
    assert iso_utc(moment) == as_datetime.isoformat(timespec="milliseconds")


def test_naive_datetime_is_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        ms_from_utc(datetime(2024, 1, 1))


VALID = trade_payload("1.50000000", "2.00000000", 7, 1_700_000_000_000, False)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"e": "aggTrade"}, "not a trade event (e='aggTrade')"),
        ({"p": 1.5}, "field 'p' must be a decimal string, got float 1.5"),
        ({"q": "abc"}, "field 'q' is not a decimal: 'abc'"),
        ({"q": "NaN"}, "field 'q' must be a positive finite decimal"),
        ({"q": "sNaN"}, "field 'q' must be a positive finite decimal"),
        ({"p": "Infinity"}, "field 'p' must be a positive finite decimal"),
        ({"t": -1}, "field 't' must not be negative, got -1"),
        ({"p": "-1.0"}, "field 'p' must be a positive finite decimal"),
        ({"p": "0.00000000"}, "field 'p' must be a positive finite decimal"),
        ({"t": "7"}, "field 't' must be an integer, got str '7'"),
        ({"t": True}, "field 't' must be an integer, got bool True"),
        ({"T": 1.7e12}, "field 'T' must be an integer, got float"),
        ({"m": "false"}, "field 'm' must be true or false, got 'false'"),
        ({"s": "btcusdt"}, "field 's' must be an upper-case symbol"),
        ({"s": None}, "field 's' must be an upper-case symbol"),
    ],
)
def test_invalid_trade_field_is_named_in_the_error(change: dict[str, object], message: str) -> None:
    with pytest.raises(FrameError) as raised:
        trade_from_payload({**VALID, **change})
    assert message in str(raised.value)
    with pytest.raises(FrameError):
        structure_trade({**VALID, **change})


# What a payload's strings can hold that matters to the parsers: decimal syntax, symbol letters, whitespace, and
# characters str.isdigit() and Decimal() accept beyond ASCII (Arabic-Indic and full-width digits, a superscript).
# An explicit alphabet also spares Hypothesis the scan of the whole codec table that the default one costs.
PAYLOAD_CHARACTERS = "0123456789.-+eE_ nNaAiIfFtTyYsSBCUDbcud\t\u0663\uff17\u00b2\u00e9"
json_scalars = (
    st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.floats()
    | st.text(alphabet=PAYLOAD_CHARACTERS, max_size=12)
    | st.sampled_from(["1.5", "-0", "0E-8", "1e400", "NaN", "-Infinity", " 2 ", "BTCUSDT", "btc", "trade"])
)
json_values = json_scalars | st.lists(json_scalars, max_size=2) | st.dictionaries(st.just("k"), json_scalars)


@given(
    changes=st.dictionaries(st.sampled_from(["e", "s", "p", "q", "T", "E", "t", "m", "x"]), json_values, max_size=3),
    removed=st.sets(st.sampled_from(["e", "s", "p", "q", "T", "E", "t", "m"]), max_size=2),
    microseconds=st.booleans(),
)
def test_the_inline_fast_path_agrees_with_the_field_by_field_checks(
    changes: dict[str, object], removed: set[str], microseconds: bool
) -> None:
    payload = {key: value for key, value in {**VALID, **changes}.items() if key not in removed}
    try:
        expected: Tick | str = _checked_trade(payload, microseconds=microseconds)
    except FrameError as error:
        expected = error.reason
    try:
        got: Tick | str = trade_from_payload(payload, microseconds=microseconds)
    except FrameError as error:
        got = error.reason
    assert got == expected


def test_missing_fields_are_listed() -> None:
    payload = {key: value for key, value in VALID.items() if key not in ("p", "T")}
    with pytest.raises(FrameError, match="lacks field"):
        trade_from_payload(payload)


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (b"", "not JSON"),
        (b'{"stream":"btcusdt@trade","data":{"e":"trade"', "not JSON"),
        (b"[1,2,3]", "trade payload must be a JSON object, got list"),
        (b'{"result":null,"id":1}', "not a trade event (e=None)"),
        (b'{"stream":"x@depth","data":{"e":"depthUpdate","s":"X"}}', "not a trade event (e='depthUpdate')"),
    ],
)
def test_bad_frames_raise_frame_error_quoting_the_frame(frame: bytes, reason: str) -> None:
    with pytest.raises(FrameError) as raised:
        parse_trade_frame(frame)
    assert raised.value.reason.startswith(reason)
    assert raised.value.frame == frame


def test_long_frame_is_truncated_in_the_error() -> None:
    with pytest.raises(FrameError) as raised:
        parse_trade_frame(b"{" + b"x" * 5000)
    assert len(str(raised.value)) < 300


def test_microsecond_time_unit_is_converted_to_ms() -> None:
    payload = {**VALID, "T": 1_700_000_000_123_456, "E": 1_700_000_000_124_999}
    tick = trade_from_payload(payload, microseconds=True)
    assert (tick.trade_time_ms, tick.event_time_ms) == (1_700_000_000_123, 1_700_000_000_124)


def test_frames_with_old_order_id_fields_are_accepted() -> None:
    assert trade_from_payload({**VALID, "b": 88, "a": 50}).trade_id == 7


def test_rest_trade_row_becomes_a_tick() -> None:
    row = {"id": 28457, "price": "4.00000100", "qty": "12.00000000", "quoteQty": "48.000012",
           "time": 1499865549590, "isBuyerMaker": True, "isBestMatch": True}
    tick = trade_from_rest("BNBBTC", row)
    assert (tick.trade_id, tick.price, tick.quantity, tick.is_buyer_maker) == (
        28457, Decimal("4.000001"), Decimal("12"), True
    )
    with pytest.raises(FrameError, match="lacks field 'qty'"):
        trade_from_rest("BNBBTC", {key: value for key, value in row.items() if key != "qty"})


def test_candle_json_uses_the_api_field_names() -> None:
    candle = Candle(
        symbol="LRCBTC", interval="1m", open_time_ms=1633998480000, close_time_ms=1633998539999,
        open=Decimal("0.00000638"), high=Decimal("0.00000638"), low=Decimal("0.00000638"),
        close=Decimal("0.00000638"), volume=Decimal("177.00000000"), quote_volume=Decimal("0.00112926"),
        trade_count=1, taker_buy_volume=Decimal("177"), taker_buy_quote_volume=Decimal("0.00112926"),
        first_trade_id=12368013, last_trade_id=12368013, closed=True,
    )
    served = orjson.loads(to_json(candle))
    assert list(served) == [
        "symbol", "interval", "open_time", "close_time", "open", "high", "low", "close", "volume",
        "quote_volume", "trade_count", "taker_buy_volume", "taker_buy_quote_volume", "first_trade_id",
        "last_trade_id", "closed", "revision", "complete",
    ]
    assert served["open_time"] == "2021-10-12T00:28:00.000+00:00"
    assert served["close_time"] == "2021-10-12T00:28:59.999+00:00"
    assert b'"quote_volume":0.00112926' in to_json(candle)
