"""Control messages: request frames, replies (results, errors, strays), correlation by id; URLs."""

from __future__ import annotations

import orjson
import pytest
import trio
import trio.testing

from app.ingest.control import ControlReply, PendingRequests, control_reply, request_frame
from app.ingest.urls import combined_stream_url, symbol_of_stream, trade_stream, uses_microseconds


def test_request_frames_follow_binances_method_shape() -> None:
    assert orjson.loads(request_frame("SUBSCRIBE", ["btcusdt@trade"], 1)) == {
        "method": "SUBSCRIBE", "params": ["btcusdt@trade"], "id": 1}
    assert orjson.loads(request_frame("LIST_SUBSCRIPTIONS", [], 3)) == {"method": "LIST_SUBSCRIPTIONS", "id": 3}


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ({"result": None, "id": 1}, ControlReply(1)),
        ({"result": ["btcusdt@trade"], "id": 3}, ControlReply(3, result=["btcusdt@trade"])),
        ({"error": {"code": 2, "msg": "Invalid request: unknown variant"}, "id": 4},
         ControlReply(4, error_code=2, error_message="Invalid request: unknown variant")),
        ({"error": "weird", "id": 5}, ControlReply(5, error_message="weird")),
        ({"error": {"code": 0, "msg": "Unknown property"}, "id": None},
         ControlReply(None, error_code=0, error_message="Unknown property")),
    ],
)
def test_control_replies_are_recognised(message: dict[str, object], expected: ControlReply) -> None:
    assert control_reply(message) == expected


def test_events_are_not_replies() -> None:
    assert control_reply({"e": "trade", "s": "BTCUSDT"}) is None
    assert control_reply({"id": 7}) is None  # neither result nor error


async def test_pending_requests_hand_each_reply_to_its_waiter(autojump_clock: trio.testing.MockClock) -> None:
    pending = PendingRequests()
    first, second = pending.open(), pending.open()
    assert first != second
    got: dict[int, ControlReply] = {}

    async def wait(request_id: int) -> None:
        got[request_id] = await pending.wait(request_id)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait, first)
        nursery.start_soon(wait, second)
        await trio.testing.wait_all_tasks_blocked()
        assert pending.resolve(ControlReply(second, error_code=2, error_message="bad"))
        assert pending.resolve(ControlReply(first))
    assert got[first] == ControlReply(first)
    assert got[second].failed
    # Late or stray replies find nobody and say so.
    assert not pending.resolve(ControlReply(first))
    assert not pending.resolve(ControlReply("abc"))
    assert len(pending) == 0


async def test_a_reply_that_arrives_before_anyone_waits_is_kept_for_the_waiter() -> None:
    # A fast server answers while the request frame is still being sent: the reply must not be lost (it once
    # was, and the waiter's lookup crashed the service).
    pending = PendingRequests()
    request_id = pending.open()
    assert pending.resolve(ControlReply(request_id, result=["btcusdt@trade"]))
    assert not pending.resolve(ControlReply(request_id))  # a second reply to the same id is a stray
    with trio.fail_after(1):
        assert await pending.wait(request_id) == ControlReply(request_id, result=["btcusdt@trade"])
    assert len(pending) == 0


async def test_waiting_requests_fail_with_the_connections_end_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pending = PendingRequests()
    first, second = pending.open(), pending.open()
    ended = RuntimeError("closed code=1008 reason=too many messages")
    failures: list[BaseException] = []

    async def wait(request_id: int) -> None:
        try:
            await pending.wait(request_id)
        except RuntimeError as error:
            failures.append(error)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait, first)
        await trio.testing.wait_all_tasks_blocked()
        pending.close(ended)
        nursery.start_soon(wait, second)  # a request that starts waiting after the end fails too
    assert failures == [ended, ended]
    assert trio.current_time() == 0  # nobody waited out a timeout
    assert len(pending) == 0


async def test_a_timed_out_wait_forgets_its_request(autojump_clock: trio.testing.MockClock) -> None:
    pending = PendingRequests()
    request_id = pending.open()
    with trio.move_on_after(10):
        await pending.wait(request_id)
    assert len(pending) == 0
    assert not pending.resolve(ControlReply(request_id))


@pytest.mark.parametrize(
    ("ws_url", "expected"),
    [
        ("wss://stream.testnet.binance.vision/ws", "wss://stream.testnet.binance.vision/stream?streams=a@trade/b@trade"),
        ("wss://stream.binance.com:9443", "wss://stream.binance.com:9443/stream?streams=a@trade/b@trade"),
        ("wss://stream.binance.com:9443/", "wss://stream.binance.com:9443/stream?streams=a@trade/b@trade"),
        ("ws://127.0.0.1:5000/stream?streams=x@trade", "ws://127.0.0.1:5000/stream?streams=a@trade/b@trade"),
        ("wss://h/ws?timeUnit=MICROSECOND", "wss://h/stream?streams=a@trade/b@trade&timeUnit=MICROSECOND"),
        ("wss://h/prefix/ws", "wss://h/prefix/stream?streams=a@trade/b@trade"),
    ],
)
def test_combined_stream_url_from_any_endpoint_form(ws_url: str, expected: str) -> None:
    assert combined_stream_url(ws_url, ["a@trade", "b@trade"]) == expected


def test_combined_stream_url_without_streams_is_the_bare_endpoint() -> None:
    assert combined_stream_url("wss://h/ws", []) == "wss://h/stream"


def test_stream_names_are_lower_case() -> None:
    assert trade_stream("BTCUSDT") == "btcusdt@trade"
    assert symbol_of_stream("btcusdt@trade") == "BTCUSDT"
    assert uses_microseconds("wss://h/ws?timeUnit=MICROSECOND")
    assert uses_microseconds("wss://h/ws?timeUnit=microsecond")
    assert not uses_microseconds("wss://h/ws")
