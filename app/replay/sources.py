"""What the simulator publishes: a recording replayed, or a seeded synthetic market.

Both are pure, clock-free generators of ``Scheduled`` events (an offset in ns from the start of the source);
the publishing loop in ``publisher.py`` owns pacing, so sources are tested without sockets or clocks.
"""

from __future__ import annotations

import math
import random
from bisect import bisect_right
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import attrs

from app.model import Tick
from app.recording import RecordingHeader, read_recording
from app.replay.events import MarketEvent, event_from_frame, trade_event

_MS_NS = 1_000_000


@attrs.frozen(slots=True)
class Scheduled:
    offset_ns: int
    event: MarketEvent


# --- recordings --------------------------------------------------------------------------------------------


@attrs.frozen(slots=True)
class LoadedRecording:
    """A recording parsed into events: ``frames`` pairs each event with its receive time in ns."""

    header: RecordingHeader
    frames: tuple[tuple[int, MarketEvent], ...]
    # Frames whose stream could not be told (not JSON, unknown event): never published.
    skipped: int

    @property
    def symbols(self) -> tuple[str, ...]:
        seen = dict.fromkeys(self.header.symbols)
        for _, event in self.frames:
            if event.tick is not None:
                seen.setdefault(event.tick.symbol)
        return tuple(seen)


def load_recording(path: Path | str) -> LoadedRecording:
    """Reads and parses a whole recording (blocking: run it in a thread)."""
    header, records = read_recording(path)
    frames: list[tuple[int, MarketEvent]] = []
    skipped = 0
    for record in records:
        event = event_from_frame(record.frame)
        if event is None:
            skipped += 1
        else:
            frames.append((record.recv_ns, event))
    return LoadedRecording(header=header, frames=tuple(frames), skipped=skipped)


def replay_schedule(recording: LoadedRecording, *, loop: bool = False) -> Iterator[Scheduled]:
    """The recording's events at their original relative times; with ``loop``, again and again.

    Each further pass shifts trade ids by the id span per symbol and times by the recording's length plus
    one mean inter-arrival, so ids and times stay consecutive across passes. Non-trade events are repeated
    unchanged (their own ids and times are not shifted).
    """
    frames = recording.frames
    if not frames:
        return
    first_ns = frames[0][0]
    span_ns = frames[-1][0] - first_ns
    gap_ns = max(_MS_NS, span_ns // len(frames))
    # Whole milliseconds, so trade times (ms) and offsets (ns) shift alike.
    pass_ns = -(-(span_ns + gap_ns) // _MS_NS) * _MS_NS
    id_spans = _trade_id_spans(frames)
    passes = range(1_000_000_000) if loop else range(1)
    for number in passes:
        shift_ns = number * pass_ns
        for recv_ns, event in frames:
            if number and event.tick is not None:
                event = trade_event(_shifted(event.tick, number * id_spans[event.tick.symbol], shift_ns // _MS_NS))
            yield Scheduled(offset_ns=recv_ns - first_ns + shift_ns, event=event)


def _trade_id_spans(frames: tuple[tuple[int, MarketEvent], ...]) -> dict[str, int]:
    low: dict[str, int] = {}
    high: dict[str, int] = {}
    for _, event in frames:
        if event.tick is not None:
            symbol, trade_id = event.tick.symbol, event.tick.trade_id
            low[symbol] = min(low.get(symbol, trade_id), trade_id)
            high[symbol] = max(high.get(symbol, trade_id), trade_id)
    return {symbol: high[symbol] - low[symbol] + 1 for symbol in low}


def _shifted(tick: Tick, id_shift: int, time_shift_ms: int) -> Tick:
    return attrs.evolve(
        tick,
        trade_id=tick.trade_id + id_shift,
        trade_time_ms=tick.trade_time_ms + time_shift_ms,
        event_time_ms=tick.event_time_ms + time_shift_ms,
    )


# --- the synthetic market ----------------------------------------------------------------------------------


@attrs.frozen(slots=True)
class SymbolProfile:
    """A synthetic symbol; prices and sizes move in powers-of-ten ticks and lots, as on Binance."""

    symbol: str
    base_asset: str
    quote_asset: str
    start_price: Decimal
    tick_exponent: int  # tick size = 10**tick_exponent
    lot_exponent: int  # lot (step) size = 10**lot_exponent
    median_notional: float  # in quote currency, per trade
    weight: float  # share of the market's trades, relative

    @property
    def tick_size(self) -> Decimal:
        return Decimal(1).scaleb(self.tick_exponent)

    @property
    def lot_size(self) -> Decimal:
        return Decimal(1).scaleb(self.lot_exponent)


# Realistic mid-2024 levels, tick and lot sizes of Binance spot's busiest pairs.
_KNOWN_PROFILES = (
    ("BTC", "61837.63", -2, -5, 400.0),
    ("ETH", "2683.80", -2, -4, 250.0),
    ("BNB", "515.20", -2, -3, 120.0),
    ("SOL", "152.31", -2, -3, 120.0),
    ("XRP", "0.5623", -4, 0, 60.0),
    ("DOGE", "0.10312", -5, 0, 40.0),
    ("ADA", "0.3381", -4, -1, 40.0),
    ("LINK", "10.42", -2, -2, 40.0),
)


def synthetic_profiles(count: int, seed: int) -> tuple[SymbolProfile, ...]:
    """``count`` symbols: the known majors first, then ``SYM0001USDT`` ... with seeded price levels."""
    rng = random.Random(f"profiles-{seed}")
    profiles: list[SymbolProfile] = []
    for index in range(count):
        weight = 1.0 / (index + 1)  # Zipf-like: a few symbols carry most of the trades
        if index < len(_KNOWN_PROFILES):
            base, price, tick_exponent, lot_exponent, notional = _KNOWN_PROFILES[index]
            profiles.append(
                SymbolProfile(f"{base}USDT", base, "USDT", Decimal(price), tick_exponent, lot_exponent, notional,
                              weight)
            )
            continue
        base = f"SYM{index - len(_KNOWN_PROFILES) + 1:04d}"
        price_exponent = rng.randint(-3, 3)
        tick_exponent = max(-8, price_exponent - 4)  # about five significant digits
        lot_exponent = min(2, max(-8, -price_exponent - 1))
        mantissa = rng.randint(10_000, 99_999)
        start_price = Decimal(mantissa).scaleb(tick_exponent)
        profiles.append(
            SymbolProfile(f"{base}USDT", base, "USDT", start_price, tick_exponent, lot_exponent, 30.0, weight)
        )
    return tuple(profiles)


# A taker order often fills several makers at once: an arrival carries 1 to MAX_FILLS trades, each further
# fill with probability EXTRA_FILL_PROBABILITY (about 1.43 trades per arrival on average).
MAX_FILLS = 8
EXTRA_FILL_PROBABILITY = 0.3
FILLS_PER_ARRIVAL = sum(EXTRA_FILL_PROBABILITY**k for k in range(MAX_FILLS))


class SyntheticMarket:
    """A seeded random market: Poisson arrivals at ``rate`` per second over all symbols (each arrival
    ``FILLS_PER_ARRIVAL`` trades on average), random-walk prices in whole ticks, log-normal trade sizes in
    whole lots, multi-fill bursts sharing one trade time, and consecutive trade ids per symbol. The same seed
    gives the same trades."""

    def __init__(self, symbols: int, rate: float, seed: int, start_ms: int) -> None:
        if symbols < 1 or rate <= 0:
            raise ValueError("a synthetic market needs at least one symbol and a positive rate")
        self.profiles = synthetic_profiles(symbols, seed)
        self.rate = rate
        self.start_ms = start_ms
        self._rng = random.Random(seed)
        self._price_ticks = [int(p.start_price.scaleb(-p.tick_exponent)) for p in self.profiles]
        self._next_id = [self._rng.randint(10_000_000, 3_000_000_000) for _ in self.profiles]
        self._cumulative_weights = _cumulative([p.weight for p in self.profiles])
        # Per symbol, precomputed for the hot path: prices and sizes are integers of 1e-8 units.
        self._streams = [f"{p.symbol.lower()}@trade" for p in self.profiles]
        self._tick_units = [10 ** (p.tick_exponent + 8) for p in self.profiles]
        self._lot_units = [10 ** (p.lot_exponent + 8) for p in self.profiles]
        self._log_notional = [math.log(p.median_notional) for p in self.profiles]

    def __iter__(self) -> Iterator[Scheduled]:
        rng = self._rng
        offset_ns = 0
        total_weight = self._cumulative_weights[-1]
        max_fills, extra_fill = MAX_FILLS, EXTRA_FILL_PROBABILITY
        while True:
            offset_ns += max(1, int(rng.expovariate(self.rate) * 1e9))
            index = bisect_right(self._cumulative_weights, rng.random() * total_weight)
            trade_ms = self.start_ms + offset_ns // _MS_NS
            event_ms = trade_ms + _LATENCIES_MS[int(rng.random() * len(_LATENCIES_MS))]
            buyer_is_maker = rng.random() < 0.5
            # The fills of one taker order: same time and side, one trade id each.
            fills = 1
            while fills < max_fills and rng.random() < extra_fill:
                fills += 1
            for _ in range(fills):
                yield Scheduled(offset_ns, self._trade(index, trade_ms, event_ms, buyer_is_maker))

    def _trade(self, index: int, trade_ms: int, event_ms: int, buyer_is_maker: bool) -> MarketEvent:
        profile, rng = self.profiles[index], self._rng
        ticks = self._price_ticks[index]
        # Relative volatility ~5e-6 per trade; a sell aggressor walks the price down, a buyer up.
        step = abs(round(rng.gauss(0.0, max(0.6, ticks * 5e-6))))
        ticks = max(1, ticks - step if buyer_is_maker else ticks + step)
        self._price_ticks[index] = ticks
        price_units = ticks * self._tick_units[index]
        lot_units = self._lot_units[index]
        notional = rng.lognormvariate(self._log_notional[index], 1.2)
        quantity_units = max(1, round(notional * 1e8 / price_units * 1e8 / lot_units)) * lot_units
        trade_id = self._next_id[index]
        self._next_id[index] = trade_id + 1
        # Eight decimals, as Binance's strings parse: equal ticks compare and print alike.
        tick = Tick(
            symbol=profile.symbol,
            price=Decimal(price_units).scaleb(-8),
            quantity=Decimal(quantity_units).scaleb(-8),
            trade_time_ms=trade_ms,
            event_time_ms=event_ms,
            trade_id=trade_id,
            is_buyer_maker=buyer_is_maker,
        )
        # Rendered from the integers: the same text as ``events.trade_payload``, without Decimal formatting.
        raw = (
            f'{{"e":"trade","E":{event_ms},"s":"{profile.symbol}","t":{trade_id},'
            f'"p":"{_units_text(price_units)}","q":"{_units_text(quantity_units)}","T":{trade_ms},'
            f'"m":{"true" if buyer_is_maker else "false"},"M":true}}'
        )
        stream = self._streams[index]
        return MarketEvent(stream=stream, raw=raw, combined=f'{{"stream":"{stream}","data":{raw}}}', tick=tick)


_LATENCIES_MS = (0, 0, 1, 1, 2)


def _units_text(units: int) -> str:
    whole, fraction = divmod(units, 100_000_000)
    return f"{whole}.{fraction:08d}"


def _cumulative(weights: list[float]) -> list[float]:
    total, out = 0.0, []
    for weight in weights:
        total += weight
        out.append(total)
    return out
