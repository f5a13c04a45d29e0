"""Packed closed candles decode back to the exact Candle, for every attrs field of the model."""

from __future__ import annotations

import string
from decimal import Decimal

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.model import Candle
from app.store.candle_ring import ClosedRing, pack, unpack

# Any finite Decimal the ring can hold: sign, up to 40 digits, exponents either side (0E-8, -0, 1E+5 ...).
exact_decimals = st.builds(
    lambda negative, coefficient, exponent: Decimal((int(negative), tuple(map(int, str(coefficient))), exponent)),
    st.booleans(), st.integers(0, 10**40), st.integers(-30, 12),
)
_BY_TYPE: dict[object, st.SearchStrategy[object]] = {
    int: st.integers(-(2**63), 2**63),
    Decimal: exact_decimals,
    bool: st.booleans(),
    str: st.text(alphabet=string.ascii_uppercase + string.digits, min_size=1, max_size=12),
}


@st.composite
def candles(draw: st.DrawFn) -> Candle:
    """A Candle with every field drawn by its declared type, so a field added to the model is covered too."""
    fields = attrs.fields(attrs.resolve_types(Candle))
    return Candle(**{field.name: draw(_BY_TYPE[field.type]) for field in fields})  # type: ignore[arg-type]


def _identical(decoded: Candle, original: Candle) -> None:
    assert decoded == original
    for field in attrs.fields(Candle):
        value, expected = getattr(decoded, field.name), getattr(original, field.name)
        assert type(value) is type(expected), field.name
        if isinstance(expected, Decimal):
            # Equal is not enough: the digits and exponent decide how the API renders it.
            assert value.as_tuple() == expected.as_tuple(), field.name


@given(candle=candles())
def test_a_packed_candle_decodes_to_the_exact_candle(candle: Candle) -> None:
    _identical(unpack(pack(candle), candle.symbol, candle.interval), candle)


@given(candle=candles())
def test_the_ring_returns_the_exact_candles_it_was_given(candle: Candle) -> None:
    ring = ClosedRing(candle.symbol, candle.interval, limit=3)
    ring.append(candle)
    _identical(ring[0], candle)
    assert ring.open_time_at(0) == candle.open_time_ms


def _candle(open_time_ms: int) -> Candle:
    price = Decimal("95234.56000000")
    return Candle("BTCUSDT", "1m", open_time_ms, open_time_ms + 59_999, price, price, price, price,
                  Decimal("0.00100000"), Decimal("95.23456000000000"), 1, Decimal(0), Decimal(0), 7, 7,
                  closed=True)


def test_the_ring_keeps_the_newest_candles_up_to_its_limit() -> None:
    ring = ClosedRing("BTCUSDT", "1m", limit=3)
    for minute in range(5):
        ring.append(_candle(minute * 60_000))
    assert ring.open_times() == [120_000, 180_000, 240_000]
    assert [candle.open_time_ms for candle in ring] == [120_000, 180_000, 240_000]
    assert ring.slice(1, 10) == [_candle(180_000), _candle(240_000)]
    ring[0] = attrs.evolve(_candle(120_000), revision=1)
    assert ring[0].revision == 1


def test_a_value_that_cannot_be_packed_is_refused_naming_its_field() -> None:
    with pytest.raises(ValueError, match=r"field high=Decimal\('NaN'\)"):
        pack(attrs.evolve(_candle(0), high=Decimal("NaN")))
