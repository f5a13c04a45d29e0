"""TickHub and the keyed fan-out: snapshots, symbol filters, overflow policies, leaving, shutdown."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

import orjson
import pytest
import trio
import trio.testing

from app.convert import api_converter
from app.model import Tick
from app.store.latest import MAX_BATCH, FeedTick, OverflowPolicy, TickHub, fan_out


def tick(symbol: str, trade_id: int) -> Tick:
    return Tick(symbol, Decimal("1.5"), Decimal("2"), 1_000 + trade_id, 1_000 + trade_id, trade_id, False)


def drain(channel: trio.MemoryReceiveChannel[Sequence[Tick]]) -> list[list[Tick]]:
    batches = []
    while True:
        try:
            batches.append(list(channel.receive_nowait()))
        except (trio.WouldBlock, trio.EndOfChannel):
            return batches


async def test_latest_is_a_snapshot_copy() -> None:
    hub = TickHub()
    await hub.publish([tick("BTCUSDT", 1), tick("ETHUSDT", 2), tick("BTCUSDT", 3)])
    snapshot = hub.latest()
    assert {s: t.trade_id for s, t in snapshot.items()} == {"BTCUSDT": 3, "ETHUSDT": 2}
    await hub.publish([tick("BTCUSDT", 4)])
    assert snapshot["BTCUSDT"].trade_id == 3
    assert hub.latest_for("BTCUSDT") == tick("BTCUSDT", 4) and hub.latest_for("XRPUSDT") is None
    assert hub.ticks_published == 4


async def test_subscribers_get_only_their_symbols_in_order() -> None:
    hub = TickHub()
    _, everything = hub.subscribe("all", 8, OverflowPolicy.CUT_OFF)
    _, btc = hub.subscribe("btc", 8, OverflowPolicy.CUT_OFF, frozenset({"BTCUSDT"}))
    _, both = hub.subscribe("both", 8, OverflowPolicy.CUT_OFF, frozenset({"BTCUSDT", "ETHUSDT"}))
    _, idle = hub.subscribe("idle", 8, OverflowPolicy.CUT_OFF, frozenset({"XRPUSDT"}))
    batch = [tick("BTCUSDT", 1), tick("ETHUSDT", 1), tick("BNBUSDT", 1), tick("BTCUSDT", 2)]
    await hub.publish(batch)
    assert drain(everything) == [batch]
    assert drain(btc) == [[batch[0], batch[3]]]
    (received,) = drain(both)
    assert sorted(received, key=lambda t: (t.symbol, t.trade_id)) == [batch[0], batch[3], batch[1]]
    assert drain(idle) == []


def feed_channel(
    hub: TickHub, name: str, symbols: frozenset[str] | None
) -> trio.MemoryReceiveChannel[Sequence[FeedTick]]:
    send, receive = trio.open_memory_channel[Sequence[FeedTick]](8)
    hub.attach_feed(name, send, 8, symbols)
    return receive


async def test_feed_subscribers_share_one_rendering_of_each_tick_in_api_json() -> None:
    hub = TickHub()
    _, internal = hub.subscribe("aggregator", 8, OverflowPolicy.BACKPRESSURE)
    first = feed_channel(hub, "ws:1", frozenset({"BTCUSDT"}))
    second = feed_channel(hub, "ws:2", frozenset({"BTCUSDT"}))
    everything = feed_channel(hub, "ws:3", None)
    batch = [tick("BTCUSDT", 1), tick("ETHUSDT", 1), tick("BTCUSDT", 2)]
    await hub.publish(batch)
    assert drain(internal) == [batch]  # Tick objects, as before
    (btc_one,), (btc_two,), (every,) = drain(first), drain(second), drain(everything)  # type: ignore[arg-type]
    assert [t.trade_id for t in btc_one] == [1, 2] and [t.trade_id for t in every] == [1, 1, 2]
    # One FeedTick per tick: the clients of a symbol are handed the same objects, rendered once.
    assert all(a is b for a, b in zip(btc_one, btc_two, strict=True))
    assert {id(t) for t in btc_one} <= {id(t) for t in every}
    assert orjson.dumps([t.json for t in every]) == orjson.dumps(api_converter.unstructure(batch))
    assert isinstance(every[0], FeedTick) and hub.subscriber_count == 4


async def test_changing_a_subscribers_symbols_keeps_its_channel_and_what_is_buffered() -> None:
    hub = TickHub()
    subscriber, channel = hub.subscribe("ws:1", 8, OverflowPolicy.CUT_OFF, frozenset({"BTCUSDT"}))
    await hub.publish([tick("BTCUSDT", 1), tick("ETHUSDT", 1)])
    hub.change_symbols(subscriber, frozenset({"ETHUSDT", "BNBUSDT"}))
    await hub.publish([tick("BTCUSDT", 2), tick("ETHUSDT", 2), tick("BNBUSDT", 2)])
    hub.change_symbols(subscriber, None)
    await hub.publish([tick("XRPUSDT", 3)])
    hub.change_symbols(subscriber, frozenset({"BTCUSDT"}))
    hub.change_symbols(subscriber, frozenset({"ETHUSDT"}))  # only the last change counts
    await hub.publish([tick("BTCUSDT", 4), tick("ETHUSDT", 4)])
    received = [[(t.symbol, t.trade_id) for t in batch] for batch in drain(channel)]
    assert received[0] == [("BTCUSDT", 1)]
    assert sorted(received[1]) == [("BNBUSDT", 2), ("ETHUSDT", 2)]
    assert received[2:] == [[("XRPUSDT", 3)], [("ETHUSDT", 4)]]
    assert subscriber.keys == frozenset({"ETHUSDT"}) and hub.subscriber_count == 1


async def test_a_key_change_for_a_subscriber_that_left_does_not_bring_it_back() -> None:
    hub = TickHub()
    subscriber, channel = hub.subscribe("ws:1", 8, OverflowPolicy.CUT_OFF, frozenset({"BTCUSDT"}))
    channel.close()
    hub.change_symbols(subscriber, None)
    await hub.publish([tick("BTCUSDT", 1)])
    assert hub.subscriber_count == 0
    await hub.publish([tick("ETHUSDT", 2)])
    assert hub.subscriber_count == 0


async def test_a_full_external_subscriber_is_cut_off_with_a_reason_and_the_others_still_get_the_batch() -> None:
    hub = TickHub()
    slow, slow_channel = hub.subscribe("slow", 2, OverflowPolicy.CUT_OFF)
    _, fast = hub.subscribe("fast", 8, OverflowPolicy.CUT_OFF)
    for trade_id in range(3):
        await hub.publish([tick("BTCUSDT", trade_id)])
    assert slow.cut_off_reason is not None and "buffer of 2 batches was full" in slow.cut_off_reason
    assert hub.subscribers_cut_off == 1 and hub.subscriber_count == 1
    # The slow one still reads what it was given, then its channel ends.
    assert [batch[0].trade_id for batch in drain(slow_channel)] == [0, 1]
    with pytest.raises(trio.EndOfChannel):
        await slow_channel.receive()
    assert [batch[0].trade_id for batch in drain(fast)] == [0, 1, 2]


async def test_a_full_internal_subscriber_makes_the_fan_out_wait_after_serving_the_others() -> None:
    hub = TickHub()
    _, internal = hub.subscribe("aggregator", 1, OverflowPolicy.BACKPRESSURE)
    _, external = hub.subscribe("ws:1", 8, OverflowPolicy.CUT_OFF)
    await hub.publish([tick("BTCUSDT", 1)])
    published = trio.Event()

    async def publish_second() -> None:
        await hub.publish([tick("BTCUSDT", 2)])
        published.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(publish_second)
        await trio.testing.wait_all_tasks_blocked()
        assert not published.is_set()  # waiting for the internal consumer ...
        assert [b[0].trade_id for b in drain(external)] == [1, 2]  # ... but the others have the batch
        assert hub.backpressure_alarms == 1
        assert (await internal.receive())[0].trade_id == 1
    assert published.is_set()
    assert (await internal.receive())[0].trade_id == 2
    assert hub.subscribers_cut_off == 0


async def test_closing_the_receiving_end_unsubscribes() -> None:
    hub = TickHub()
    _, channel = hub.subscribe("leaver", 4, OverflowPolicy.CUT_OFF)
    await channel.aclose()
    await hub.publish([tick("BTCUSDT", 1)])
    assert hub.subscriber_count == 0 and hub.subscribers_cut_off == 0


async def test_thousands_of_idle_subscribers_that_left_are_swept_out() -> None:
    hub = TickHub()
    for number in range(5000):
        _, channel = hub.subscribe(f"ws:{number}", 4, OverflowPolicy.CUT_OFF, frozenset({"IDLEUSDT"}))
        channel.close()
    assert hub.subscriber_count < 128


async def test_fan_out_batches_the_ingest_channel_and_ends_every_subscriber() -> None:
    hub = TickHub()
    ticks_send, ticks_receive = trio.open_memory_channel[list[Tick]](10_000)
    _, subscriber = hub.subscribe("all", 100, OverflowPolicy.BACKPRESSURE)
    # Socket reads of 1 to 40 trades: what is waiting is merged into batches of about MAX_BATCH.
    sizes = [1 + number % 40 for number in range(200)]
    first_ids = [sum(sizes[:index]) for index in range(len(sizes))]
    for first_id, size in zip(first_ids, sizes, strict=True):
        ticks_send.send_nowait([tick("BTCUSDT", trade_id) for trade_id in range(first_id, first_id + size)])
    ticks_send.close()
    await fan_out(ticks_receive, hub)
    batches = drain(subscriber)
    total = sum(sizes)
    assert [t.trade_id for batch in batches for t in batch] == list(range(total))
    assert all(MAX_BATCH <= len(batch) < MAX_BATCH + 40 for batch in batches[:-1])
    assert len(batches) <= -(-total // MAX_BATCH)
    assert hub.ticks_published == total
    assert hub.closed
    _, late = hub.subscribe("late", 4, OverflowPolicy.CUT_OFF)
    with pytest.raises(trio.EndOfChannel):
        await late.receive()


async def test_a_source_attached_to_a_shared_channel_is_marked_ended_and_nudged_when_the_hub_closes() -> None:
    hub = TickHub()
    send, inbox = trio.open_memory_channel[Sequence[FeedTick]](4)
    ticks = hub.attach_feed("ws:1", send.clone(), 4)
    left = hub.attach_feed("ws:2", send.clone(), 4)
    hub.leave_feed(left)
    assert hub.subscriber_count == 1 and not ticks.ended
    await hub.publish([tick("BTCUSDT", 1)])
    hub.close()
    # The inbox does not end (the session still holds a clone), so the hub says so: an empty batch, and ``ended``.
    assert [[t.trade_id for t in batch] for batch in drain(inbox)] == [[1], []]  # type: ignore[arg-type]
    assert ticks.ended and ticks.cut_off_reason is None and not inbox.statistics().open_send_channels == 0
