"""Which ingest shard owns a symbol: a stable hash every process computes alike."""

from __future__ import annotations

import zlib
from collections.abc import Iterable


def shard_of(symbol: str, shard_count: int) -> int:
    """CRC-32 of the upper-case symbol, mod the number of shards."""
    return zlib.crc32(symbol.upper().encode()) % shard_count


def owned_symbols(symbols: Iterable[str], shard_index: int, shard_count: int) -> tuple[str, ...]:
    return tuple(symbol for symbol in symbols if shard_of(symbol, shard_count) == shard_index)
