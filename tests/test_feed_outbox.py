"""The feed's outbox: what waits for one client, and the pacing rule (at once when idle, coalesced while busy)."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.model import Candle, Tick
from app.settings import Settings
from app.store.latest import FeedTick
from app.web.feed import MAX_PENDING_REPLIES, FeedLimits
from app.web.feed_outbox import MAX_ITEMS_PER_FRAME, CandleFrame, Outbox, TickFrame
from app.web.feed_protocol import MAX_ID_LENGTH, MAX_SYMBOLS_PER_MESSAGE, Selection

EVERYTHING = Selection(everything=True)


def tick(symbol: str, trade_id: int) -> FeedTick:
    return FeedTick.of(Tick(symbol, Decimal("1.5"), Decimal("2"), 1_000 + trade_id, 1_001 + trade_id, trade_id, False))


def candle(symbol: str, open_time_ms: int, trade_count: int, *, closed: bool = False, revision: int = 0) -> Candle:
    price = Decimal("1")
    return Candle(symbol, "1m", open_time_ms, open_time_ms + 59_999, price, price, price, price, Decimal(trade_count),
                  Decimal(trade_count), trade_count, Decimal(0), Decimal(0), 1, trade_count, closed, revision)


def take_all(outbox: Outbox, ticks: Selection = EVERYTHING, candles: dict[str, Selection] | None = None) -> list:
    return outbox.take(ticks, {"1m": EVERYTHING} if candles is None else candles)


def test_an_idle_connection_gets_each_item_at_once() -> None:
    outbox = Outbox()
    assert not outbox.ready
    outbox.add_ticks([tick("BTCUSDT", 1)])
    assert outbox.ready  # no timer: the first trade after a quiet spell goes now
    assert take_all(outbox) == [TickFrame([tick("BTCUSDT", 1)])]
    outbox.sent()
    outbox.add_ticks([tick("BTCUSDT", 2)])
    assert outbox.ready  # and so does the next one, however soon it follows
    assert take_all(outbox) == [TickFrame([tick("BTCUSDT", 2)])]


def test_what_arrives_while_a_send_is_in_flight_is_coalesced_into_the_next_frame() -> None:
    outbox = Outbox()
    outbox.add_ticks([tick("BTCUSDT", 1)])
    take_all(outbox)
    for trade_id in range(2, 6):
        outbox.add_ticks([tick("BTCUSDT", trade_id)])
        assert not outbox.ready and outbox.pending == trade_id - 1
    outbox.add_reply(b'{"op":"pong"}')
    assert not outbox.ready  # a reply waits for the send in flight too (one connection, one send at a time)
    outbox.sent()
    assert outbox.ready
    assert take_all(outbox) == [b'{"op":"pong"}', TickFrame([tick("BTCUSDT", n) for n in range(2, 6)])]
    assert outbox.pending == 0


def test_frames_hold_at_most_the_size_limit_in_order() -> None:
    outbox = Outbox(max_items_per_frame=3)
    outbox.add_ticks([tick("BTCUSDT", n) for n in range(7)])
    frames = take_all(outbox)
    assert [[t.trade_id for t in frame.ticks] for frame in frames] == [[0, 1, 2], [3, 4, 5], [6]]
    with pytest.raises(ValueError, match="at least 1"):
        Outbox(max_items_per_frame=0)


def test_only_the_latest_state_of_each_candle_is_sent_and_an_older_one_never_replaces_it() -> None:
    outbox = Outbox()
    outbox.add_candles("1m", [candle("BTCUSDT", 0, 3), candle("ETHUSDT", 0, 1)])
    outbox.add_candles("1m", [candle("BTCUSDT", 0, 5)])
    outbox.add_candles("1m", [candle("BTCUSDT", 0, 4)])  # a snapshot taken before the update above
    outbox.add_candles("1m", [candle("BTCUSDT", 0, 5, closed=True), candle("BTCUSDT", 60_000, 1)])
    assert outbox.pending == 3
    (frame,) = take_all(outbox)
    assert isinstance(frame, CandleFrame) and frame.interval == "1m"
    assert [(c.symbol, c.open_time_ms, c.trade_count, c.closed) for c in frame.candles] == [
        ("BTCUSDT", 0, 5, True), ("ETHUSDT", 0, 1, False), ("BTCUSDT", 60_000, 1, False)]
    outbox.sent()
    outbox.add_candles("1m", [candle("BTCUSDT", 0, 6, closed=True, revision=1)])
    (revised,) = take_all(outbox)
    assert revised.candles[0].revision == 1


def test_data_the_client_unsubscribed_from_meanwhile_is_dropped_when_taken() -> None:
    outbox = Outbox()
    outbox.add_ticks([tick("BTCUSDT", 1), tick("ETHUSDT", 1), tick("BTCUSDT", 2)])
    outbox.add_candles("1m", [candle("BTCUSDT", 0, 1)])
    outbox.add_candles("5m", [attrs.evolve(candle("ETHUSDT", 0, 1), interval="5m")])
    frames = outbox.take(Selection(symbols={"BTCUSDT"}), {"5m": EVERYTHING})
    assert frames == [TickFrame([tick("BTCUSDT", 1), tick("BTCUSDT", 2)]),
                      CandleFrame("5m", [attrs.evolve(candle("ETHUSDT", 0, 1), interval="5m")])]


def test_without_a_recheck_every_waiting_tick_goes_out() -> None:
    # The session skips the pass when no subscription changed since the last take (the fan-out filtered).
    outbox = Outbox()
    outbox.add_ticks([tick("BTCUSDT", 1), tick("ETHUSDT", 1)])
    frames = outbox.take(Selection(symbols={"BTCUSDT"}), {}, recheck_ticks=False)
    assert frames == [TickFrame([tick("BTCUSDT", 1), tick("ETHUSDT", 1)])]


def test_clear_drops_everything_waiting() -> None:
    outbox = Outbox()
    outbox.add_reply(b"{}")
    outbox.add_ticks([tick("BTCUSDT", 1)])
    outbox.clear()
    assert not outbox.ready and outbox.pending == 0 and take_all(outbox) == []


# One step of a connection: a batch of trade ids arrives, or the send in flight completes (and the next is taken).
STEPS = st.lists(st.one_of(st.integers(min_value=1, max_value=50), st.just("sent")), max_size=60)


@given(STEPS, st.integers(min_value=1, max_value=40))
def test_every_tick_goes_out_once_in_order_and_never_waits_on_an_idle_connection(
    steps: list[int | str], max_items: int,
) -> None:
    outbox = Outbox(max_items_per_frame=max_items)
    next_id = 0
    sent: list[int] = []

    def take() -> None:
        frames = take_all(outbox)
        assert frames and all(0 < len(frame.ticks) <= max_items for frame in frames)
        sent.extend(t.trade_id for frame in frames for t in frame.ticks)

    for step in steps:
        if step == "sent":
            if outbox.in_flight:
                outbox.sent()
        else:
            assert isinstance(step, int)
            outbox.add_ticks([tick("BTCUSDT", trade_id) for trade_id in range(next_id, next_id + step)])
            next_id += step
        # The shell's rule: whenever the connection is idle and something waits, it goes at once.
        if outbox.ready:
            take()
        assert outbox.in_flight or outbox.pending == 0
    if outbox.in_flight:
        outbox.sent()
    if outbox.ready:
        take()
    assert sent == list(range(next_id))


def test_the_readmes_feed_section_states_the_codes_limits() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme[readme.index("## WebSocket feed") : readme.index("## Ingestion guarantees")]
    flat = " ".join(section.split())
    assert f"at most {MAX_ITEMS_PER_FRAME:,} items each" in flat
    assert f"more than {FeedLimits().max_pending:,} items waiting" in flat
    assert f"More than {MAX_PENDING_REPLIES:,} replies unread" in flat
    assert f"At most {MAX_SYMBOLS_PER_MESSAGE:,} symbols per message, ids up to {MAX_ID_LENGTH} characters" in flat
    assert f"(default {Settings().max_subscriptions_per_connection:,};" in flat
    assert "no timer between frames" in flat.lower()
