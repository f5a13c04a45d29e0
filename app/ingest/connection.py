"""One open WebSocket to Binance's combined stream: frames in (parsed to ticks), paced control requests out.

The receive loop is the hot path: one ``orjson.loads``, one hand-tuned parse, and a ``send_nowait`` into the
sequencer's inbox per trade. Anything else that arrives is classified explicitly: replies to our requests go
to their waiter, ``serverShutdown`` asks for a replacement connection, other well-formed events are counted
and skipped, and anything unparsable is counted and logged (rate-limited, frame truncated); none of it stops
the stream.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import orjson
import trio
import trio_websocket

from app.convert import FrameError, quote_frame, trade_from_payload
from app.ingest.control import (
    SUBSCRIBE,
    UNSUBSCRIBE,
    ControlError,
    ControlTimeout,
    PendingRequests,
    control_reply,
    request_frame,
)
from app.ingest.log_throttle import LogThrottle
from app.ingest.pacer import Pacer
from app.ingest.status import ConnectionStatus, IngestStatus
from app.model import Tick

log = logging.getLogger(__name__)

ACK_TIMEOUT_SECONDS = 10.0
# Streams per SUBSCRIBE/UNSUBSCRIBE request (Binance documents no limit; keep frames small).
STREAMS_PER_REQUEST = 200
SERVER_SHUTDOWN = "serverShutdown"

# Where parsed trades go: the sequencer's ``accept`` (or a channel's ``send`` in tests).
TickSink = Callable[[Tick], Awaitable[None]]


class StreamConnection:
    """An open socket plus what the server has confirmed it sends on it (``subscribed``)."""

    def __init__(
        self,
        name: str,
        socket: trio_websocket.WebSocketConnection,
        url_streams: Iterable[str],
        status: ConnectionStatus,
        ingest: IngestStatus,
        *,
        microseconds: bool = False,
        ack_timeout: float = ACK_TIMEOUT_SECONDS,
    ) -> None:
        self.name = name
        self.socket = socket
        # Streams in the URL count as subscribed from the handshake on.
        self.subscribed: set[str] = set(url_streams)
        # Streams the server refused with an error reply: not asked for again on this connection.
        self.rejected: set[str] = set()
        # The scope of everything serving this connection (set by the client): cancelling it ends the connection.
        self.scope: trio.CancelScope | None = None
        self.status = status
        self._ingest = ingest
        self._microseconds = microseconds
        self._ack_timeout = ack_timeout
        self._pending = PendingRequests()
        self._pacer = Pacer()
        self.opened_at = trio.current_time()
        self.last_frame_at: float | None = None
        self.trades_received = 0
        self.shutdown_announced = trio.Event()
        # Why the connection ended, for the log line and tests.
        self.end_reason = ""
        self._parse_log = LogThrottle()

    def abort(self, reason: str) -> None:
        if not self.end_reason:
            self.end_reason = reason
        if self.scope is not None:
            self.scope.cancel()

    # --- control requests ---

    async def request(self, method: str, params: Sequence[str]) -> object:
        """Sends a paced request and returns its ``result``; raises ControlError on an error reply or silence."""
        request_id = self._pending.open()
        await self._pacer.send(self.socket.send_message, request_frame(method, params, request_id))
        self.status.control_messages_sent += 1
        with trio.move_on_after(self._ack_timeout):
            reply = await self._pending.wait(request_id)
            if reply.failed:
                self._ingest.error_replies += 1
                log.warning("control request failed connection=%s method=%s code=%s msg=%s",
                            self.name, method, reply.error_code, reply.error_message)
                raise ControlError(method, params, reply.error_message or "error", reply.error_code)
            return reply.result
        raise ControlTimeout(method, params, f"no reply within {self._ack_timeout:.0f} s")

    async def subscribe(self, streams: Sequence[str]) -> None:
        for start in range(0, len(streams), STREAMS_PER_REQUEST):
            chunk = streams[start : start + STREAMS_PER_REQUEST]
            await self.request(SUBSCRIBE, chunk)
            self.subscribed.update(chunk)
            self.status.streams = len(self.subscribed)

    async def unsubscribe(self, streams: Sequence[str]) -> None:
        for start in range(0, len(streams), STREAMS_PER_REQUEST):
            chunk = streams[start : start + STREAMS_PER_REQUEST]
            # Gone from our side at once: a failed request still leaves them unwanted.
            self.subscribed.difference_update(chunk)
            self.status.streams = len(self.subscribed)
            await self.request(UNSUBSCRIBE, chunk)

    # --- receiving ---

    async def receive(self, accept: TickSink) -> None:
        """Parses frames and hands each trade to ``accept`` until the connection closes (returns;
        ``end_reason`` says why)."""
        get_message = self.socket.get_message
        loads = orjson.loads
        parse = trade_from_payload
        microseconds = self._microseconds
        status = self.status
        current_time = trio.current_time
        try:
            while True:
                frame = await get_message()
                self.last_frame_at = status.last_frame_at = current_time()
                status.frames_received += 1
                try:
                    message = loads(frame)
                    data = message.get("data")
                except (orjson.JSONDecodeError, AttributeError):
                    self._bad_frame("not a JSON object", frame)
                    continue
                if data is None:
                    self._on_message(message, frame)
                    continue
                try:
                    tick = parse(data, microseconds=microseconds)
                except FrameError as error:
                    self._on_event(data, error, frame, message.get("stream"))
                    continue
                self.trades_received += 1
                await accept(tick)
        except trio_websocket.ConnectionClosed as closed:
            reason = closed.reason
            self.end_reason = "closed" if reason is None else f"closed code={reason.code} reason={reason.reason}"

    def _on_message(self, message: dict[str, Any], frame: str | bytes) -> None:
        """A frame without ``data``: a reply to a request, or a raw-endpoint event."""
        reply = control_reply(message)
        if reply is not None:
            if not self._pending.resolve(reply):
                log.debug("reply to no pending request connection=%s frame=%s", self.name, quote_frame(frame))
            return
        if "e" in message:
            self._on_event(message, None, frame)
            return
        self._bad_frame("neither a stream event nor a reply", frame)

    def _on_event(
        self, data: object, error: FrameError | None, frame: str | bytes, stream: object = None
    ) -> None:
        kind = data.get("e") if isinstance(data, dict) else None
        if kind is None and isinstance(stream, str) and not stream.endswith("@trade"):
            # Some streams (e.g. @bookTicker) carry no event type: their stream name says what they are.
            kind = stream.partition("@")[2] or stream
        if kind == "trade":
            if error is None:  # a raw-endpoint trade (not used with combined URLs, but harmless)
                error = FrameError("raw trade event on a combined stream")
            self._bad_frame(error.reason, frame)
        elif kind == SERVER_SHUTDOWN:
            self._ingest.server_shutdowns += 1
            log.warning("serverShutdown received connection=%s: switching connections", self.name)
            self.shutdown_announced.set()
        elif isinstance(kind, str):
            self._ingest.unknown_events += 1
            log.debug("skipped event connection=%s type=%s", self.name, kind)
        else:
            self._bad_frame(error.reason if error is not None else "event without a type", frame)

    def _bad_frame(self, reason: str, frame: str | bytes) -> None:
        self._ingest.parse_errors += 1
        suppressed = self._parse_log.allow(trio.current_time())
        if suppressed is not None:
            log.warning("unparsable frame connection=%s error=%s suppressed_since_last=%d frame=%s",
                        self.name, reason, suppressed, quote_frame(frame))
