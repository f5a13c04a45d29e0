"""The API's JSON back into the model (the typed client): exact decimals and times, and the feed's hot path
equal to the converter."""

from __future__ import annotations

from decimal import Decimal

import cattrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.convert import api_converter, api_json, candles_from_api, iso_utc, ticks_from_api, to_json
from app.model import Candle, Tick

# Epoch ms from 1970 to 9999 (what iso_utc renders with a four-digit year).
times = st.integers(min_value=0, max_value=253_402_300_799_999)
amounts = st.decimals(min_value=Decimal("0.00000001"), max_value=Decimal("1e12"), places=8, allow_nan=False,
                      allow_infinity=False) | st.integers(min_value=1, max_value=10**12).map(Decimal)
symbols = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", min_size=2, max_size=20)
ticks = st.builds(Tick, symbol=symbols, price=amounts, quantity=amounts, trade_time_ms=times, event_time_ms=times,
                  trade_id=st.integers(min_value=0, max_value=2**63), is_buyer_maker=st.booleans())


@given(st.lists(ticks, max_size=20))
def test_ticks_survive_the_api_json_exactly(batch: list[Tick]) -> None:
    rows = api_json(to_json(batch))
    assert ticks_from_api(rows) == batch
    assert api_converter.structure(rows, list[Tick]) == batch


@given(times)
def test_iso_times_read_back_to_the_millisecond(epoch_ms: int) -> None:
    [tick] = ticks_from_api(api_json(to_json([Tick("BTCUSDT", Decimal(1), Decimal(1), epoch_ms, epoch_ms, 1,
                                                    False)])))
    assert tick.trade_time_ms == epoch_ms and iso_utc(tick.event_time_ms) == iso_utc(epoch_ms)


def test_candles_survive_the_api_json_exactly() -> None:
    candle = Candle("BTCUSDT", "1m", 1_723_161_240_000, 1_723_161_299_999, Decimal("60000.01"), Decimal("60010"),
                    Decimal("59990.5"), Decimal("60001.00000001"), Decimal("1.23456789"),
                    Decimal("74074.123456789012"), 3, Decimal("0.5"), Decimal("30000.005"), 7, 9, False, 2)
    assert candles_from_api(api_json(to_json([candle]))) == [candle]


@pytest.mark.parametrize("row", [
    {"symbol": "BTCUSDT", "quantity": 1, "timestamp": "2024-08-08T23:54:15.342+00:00",
     "event_time": "2024-08-08T23:54:15.342+00:00", "trade_id": 1, "is_buyer_maker": False},  # no price
    {"symbol": "BTCUSDT", "price": "x", "quantity": 1, "timestamp": "2024-08-08T23:54:15.342+00:00",
     "event_time": "2024-08-08T23:54:15.342+00:00", "trade_id": 1, "is_buyer_maker": False},
    {"symbol": "BTCUSDT", "price": 1, "quantity": 1, "timestamp": "yesterday",
     "event_time": "2024-08-08T23:54:15.342+00:00", "trade_id": 1, "is_buyer_maker": False},
])
def test_a_bad_row_is_a_precise_error(row: dict[str, object]) -> None:
    with pytest.raises(cattrs.ClassValidationError):
        ticks_from_api([row])
