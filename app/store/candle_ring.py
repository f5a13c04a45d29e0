"""Closed candles kept compactly: each one packed into a small ``bytes`` record, decoded back on demand.

A ``Candle`` object with its exact Decimals costs ~920 bytes; its packed record ~150 (bench/RESULTS.md). The
series' ring holds thousands per symbol for hours, so the rings hold records and readers get ``Candle`` objects
back, equal field for field (a Decimal keeps its sign, digits and exponent, so it renders identically).

Every attrs field of ``Candle`` is packed generically by its value's type (int, Decimal, bool, str, None), so a
field added to the model needs no change here. ``symbol`` and ``interval`` are the ring's own and are not
stored per candle. ``open_time_ms`` is packed first, so the ring searches by open time without decoding.
"""

from __future__ import annotations

import decimal
from collections import deque
from collections.abc import Iterable, Iterator
from decimal import Decimal

import attrs

from app.model import Candle

# Supplied by the ring, not stored in each record.
_RING_FIELDS = ("symbol", "interval")
_KEY_FIELD = "open_time_ms"
_PACKED_FIELDS = (_KEY_FIELD, *(
    field.name for field in attrs.fields(Candle) if field.name not in (*_RING_FIELDS, _KEY_FIELD)
))

# One tag byte per value; int, Decimal and str are followed by a length byte and their bytes (a Decimal's
# exponent byte first, then its coefficient's magnitude; the tag carries the sign, so -0 survives).
_NONE, _FALSE, _TRUE, _INT, _DECIMAL, _NEGATIVE_DECIMAL, _STR = range(7)
_MAX_LENGTH = 255

# Only rescales a coefficient: nothing may round (Inexact traps), as in the candle builder.
_EXACT = decimal.Context(prec=100, Emin=-999_999, Emax=999_999,
                         traps=[decimal.Inexact, decimal.InvalidOperation, decimal.Overflow])


def pack(candle: Candle) -> bytes:
    """The record of ``candle`` (its ``symbol`` and ``interval`` are left to the ring)."""
    out = bytearray()
    for name in _PACKED_FIELDS:
        _pack_value(getattr(candle, name), name, out)
    return bytes(out)


def unpack(record: bytes, symbol: str, interval: str) -> Candle:
    """The exact ``Candle`` that ``pack`` turned into ``record``."""
    values: dict[str, object] = {"symbol": symbol, "interval": interval}
    position = 0
    for name in _PACKED_FIELDS:
        values[name], position = _unpack_value(record, position)
    return Candle(**values)  # type: ignore[arg-type]


def open_time_ms(record: bytes) -> int:
    """The open time of a record, without decoding the rest."""
    length = record[1]
    return int.from_bytes(record[2:2 + length], "little", signed=True)


def _pack_value(value: object, name: str, out: bytearray) -> None:
    # bool before int: bool is a subclass of int.
    if value is None:
        out.append(_NONE)
    elif value is True or value is False:
        out.append(_TRUE if value else _FALSE)
    elif isinstance(value, int):
        _pack_bytes(_INT, value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True), name, out)
    elif isinstance(value, Decimal):
        sign, digits, exponent = value.as_tuple()
        if not isinstance(exponent, int) or not -128 <= exponent <= 127:
            raise ValueError(f"cannot pack candle field {name}={value!r}: not finite or exponent out of range")
        coefficient = int("".join(map(str, digits)))
        payload = exponent.to_bytes(1, "little", signed=True) + coefficient.to_bytes(
            (coefficient.bit_length() + 7) // 8, "little")
        _pack_bytes(_NEGATIVE_DECIMAL if sign else _DECIMAL, payload, name, out)
    elif isinstance(value, str):
        _pack_bytes(_STR, value.encode(), name, out)
    else:
        raise TypeError(f"cannot pack candle field {name}={value!r}: unsupported type {type(value).__name__}")


def _pack_bytes(tag: int, payload: bytes, name: str, out: bytearray) -> None:
    if len(payload) > _MAX_LENGTH:
        raise ValueError(f"cannot pack candle field {name}: {len(payload)} bytes, at most {_MAX_LENGTH}")
    out.append(tag)
    out.append(len(payload))
    out += payload


def _unpack_value(record: bytes, position: int) -> tuple[object, int]:
    tag = record[position]
    if tag == _NONE:
        return None, position + 1
    if tag == _FALSE or tag == _TRUE:
        return tag == _TRUE, position + 1
    start = position + 2
    end = start + record[position + 1]
    if tag == _INT:
        return int.from_bytes(record[start:end], "little", signed=True), end
    if tag == _STR:
        return record[start:end].decode(), end
    exponent = int.from_bytes(record[start:start + 1], "little", signed=True)
    value = Decimal(int.from_bytes(record[start + 1:end], "little")).scaleb(exponent, _EXACT)
    return (value.copy_negate() if tag == _NEGATIVE_DECIMAL else value), end


class ClosedRing:
    """The recent closed candles of one (symbol, interval), oldest first, as packed records; at most ``limit``
    (the oldest falls out)."""

    __slots__ = ("_records", "interval", "symbol")

    def __init__(self, symbol: str, interval: str, limit: int) -> None:
        self.symbol = symbol
        self.interval = interval
        self._records: deque[bytes] = deque(maxlen=limit)

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> Candle:
        return unpack(self._records[index], self.symbol, self.interval)

    def __setitem__(self, index: int, candle: Candle) -> None:
        self._records[index] = pack(candle)

    def __iter__(self) -> Iterator[Candle]:
        symbol, interval = self.symbol, self.interval
        return (unpack(record, symbol, interval) for record in self._records)

    def append(self, candle: Candle) -> None:
        self._records.append(pack(candle))

    def replace_all(self, candles: Iterable[Candle]) -> None:
        self._records.clear()
        self._records.extend(pack(candle) for candle in candles)

    def open_time_at(self, index: int) -> int:
        return open_time_ms(self._records[index])

    def open_times(self) -> list[int]:
        return [open_time_ms(record) for record in self._records]

    def slice(self, start: int, stop: int) -> list[Candle]:
        symbol, interval = self.symbol, self.interval
        records = self._records
        return [unpack(records[index], symbol, interval) for index in range(max(0, start), min(stop, len(records)))]
