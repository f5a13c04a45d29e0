"""Ingestion keeps its turns however many ``/ws`` clients are busy: at most ``FeedLimits.concurrent_sends``
sessions send at once, the others wait off Trio's run queue with their data coalescing.

The failure this guards against (bench row 6): 1,000 clients catching up each took a step in every pass of the
scheduler, a pass grew to seconds, the exchange connection's reader (one socket read per pass) fell behind, and
the exchange dropped the connection as a slow consumer. Passes are counted here in scheduler steps, not time:
a probe task that is always runnable stands in for the ingest reader, and an instrument counts the frames the
clients received between two of its turns.
"""

from __future__ import annotations

import socket
from contextlib import AsyncExitStack

import orjson
import trio
import trio_websocket
from test_feed import request
from trio_websocket import WebSocketConnection, open_websocket_url
from web_harness import Harness, make_ticks, running_web, wait_until

from app.web.feed import FeedLimits

CLIENTS = 40
TICKS_PER_SYMBOL = 1_500
SYMBOLS = ("BTCUSDT", "ETHUSDT")
SUBSCRIBE_ALL = {"op": "subscribe", "channel": "ticks", "symbols": "*"}


class FramesBetweenTurns(trio.abc.Instrument):
    """The most data frames the clients received between two consecutive steps of ``probe`` (a pass of the
    scheduler may run the probe first and the next pass last, hence the bound of twice the slots)."""

    def __init__(self) -> None:
        self.probe: trio.lowlevel.Task | None = None
        self.frames_received = 0
        self._at_last_turn = 0
        self.most = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is self.probe:
            self.most = max(self.most, self.frames_received - self._at_last_turn)
            self._at_last_turn = self.frames_received


async def _read_every_trade(ws: WebSocketConnection, done: list[int], counter: FramesBetweenTurns) -> None:
    last: dict[str, int] = {}
    received = 0
    while received < TICKS_PER_SYMBOL * len(SYMBOLS):
        frame = await ws.get_message()
        counter.frames_received += 1
        for tick in orjson.loads(frame)["data"]:
            symbol, trade_id = tick["symbol"], tick["trade_id"]
            assert trade_id == last.get(symbol, 0) + 1, (symbol, trade_id, last.get(symbol))
            last[symbol] = trade_id
            received += 1
    done.append(received)


async def _frames_between_probe_turns(concurrent_sends: int) -> int:
    """Publishes a burst to ``CLIENTS`` subscribers of every symbol, checks each got every trade in order, and
    returns the most frames received between two turns of an always-runnable probe."""
    instrument = FramesBetweenTurns()
    done: list[int] = []

    async def probe() -> None:
        instrument.probe = trio.lowlevel.current_task()
        trio.lowlevel.add_instrument(instrument)
        try:
            while len(done) < CLIENTS:
                await trio.lowlevel.checkpoint()
        finally:
            trio.lowlevel.remove_instrument(instrument)

    with trio.fail_after(60):
        async with running_web(feed_limits=FeedLimits(concurrent_sends=concurrent_sends)) as web:
            async with AsyncExitStack() as stack:
                clients = []
                for _ in range(CLIENTS):
                    ws = await stack.enter_async_context(open_websocket_url(web.ws_url, disconnect_timeout=5))
                    await ws.send_message(orjson.dumps(SUBSCRIBE_ALL).decode())
                    assert orjson.loads(await ws.get_message())["op"] == "subscribed"
                    clients.append(ws)
                async with trio.open_nursery() as nursery:
                    for ws in clients:
                        nursery.start_soon(_read_every_trade, ws, done, instrument)
                    nursery.start_soon(probe)
                    for symbol in SYMBOLS:
                        await web.publish(make_ticks(symbol, 1, TICKS_PER_SYMBOL))
    assert done == [TICKS_PER_SYMBOL * len(SYMBOLS)] * CLIENTS
    return instrument.most


async def test_busy_clients_get_at_most_the_send_slots_worth_of_frames_between_two_turns_of_ingestion() -> None:
    slots = 4
    assert await _frames_between_probe_turns(concurrent_sends=slots) <= 2 * slots
    # The same burst with a slot per client: each catching-up client sends in every pass (what starved ingest).
    assert await _frames_between_probe_turns(concurrent_sends=CLIENTS) > 2 * slots


async def open_small_window_stream(web: Harness) -> trio.SocketStream:
    """A TCP connection with a tiny receive window: once its owner stops reading, the server's writes block."""
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    host, port = web.base_url.removeprefix("http://").split(":")
    await sock.connect((host, int(port)))
    return trio.SocketStream(sock)


async def test_a_client_that_stopped_reading_keeps_no_send_slot() -> None:
    # One slot, and a client whose socket fills up: Hypercorn's write to it blocks for good (shielded), and the
    # other client must still get every trade.
    limits = FeedLimits(concurrent_sends=1, max_pending=10_000_000)
    with trio.fail_after(60):
        async with running_web(feed_limits=limits) as web:
            async with trio.open_nursery() as nursery, open_websocket_url(web.ws_url, disconnect_timeout=5) as reader:
                stalled_stream = await open_small_window_stream(web)
                stalled = await trio_websocket.wrap_client_stream(nursery, stalled_stream, "127.0.0.1", "/ws",
                                                                 message_queue_size=1)
                for ws in (stalled, reader):
                    await request(ws, SUBSCRIBE_ALL)
                try:
                    received: list[int] = []

                    async def read() -> None:
                        while True:
                            frame = await reader.get_message()
                            received.extend(tick["trade_id"] for tick in orjson.loads(frame)["data"])

                    nursery.start_soon(read)
                    # 60,000 ticks are ~12 MB of frames: far more than the stalled client's socket buffers take.
                    for burst in range(30):
                        await web.publish_and_settle(make_ticks("BTCUSDT", burst * 2_000 + 1, 2_000))
                        await wait_until(lambda count=(burst + 1) * 2_000: len(received) >= count)
                    assert received == list(range(1, 60_001))
                finally:
                    # Hypercorn's blocked write ends only with the connection: drop it, as a vanished client would.
                    await stalled_stream.aclose()
                nursery.cancel_scope.cancel()
