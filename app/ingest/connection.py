"""One open WebSocket to Binance's combined stream: frames in (parsed to ticks), paced control requests out.

The receive loop is the hot path: each socket read yields a batch of messages; each gets one ``orjson.loads``
and one hand-tuned parse, and the batch's trades go to the sequencer as one item on a memory channel. Anything
else that arrives is classified explicitly: replies to our requests go to their waiter, ``serverShutdown`` asks
for a replacement connection, other well-formed events are counted and skipped, and anything unparsable is
counted and logged (rate-limited, frame truncated); none of it stops the stream. When the socket closes, requests
still waiting for a reply fail at once (they do not wait out their timeout).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import orjson
import trio

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
from app.ingest.stream_socket import SocketClosed, StreamSocket
from app.model import Tick

log = logging.getLogger(__name__)

ACK_TIMEOUT_SECONDS = 10.0
# Streams per SUBSCRIBE/UNSUBSCRIBE request (Binance documents no limit; keep frames small).
STREAMS_PER_REQUEST = 200
SERVER_SHUTDOWN = "serverShutdown"


class StreamConnection:
    """An open socket plus what the server has confirmed it sends on it (``subscribed``)."""

    def __init__(
        self,
        name: str,
        socket: StreamSocket,
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
        try:
            await self._pacer.send(self.socket.send_text, request_frame(method, params, request_id))
        except BaseException:
            self._pending.forget(request_id)
            raise
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

    async def receive(self, live_ticks: trio.MemorySendChannel[list[Tick]]) -> None:
        """Parses frames and sends each read's trades on ``live_ticks`` until the connection closes (returns;
        ``end_reason`` says why). Waits while the channel is full: the sequencer's pace is the socket's."""
        send = live_ticks.send
        receive_batch = self.socket.receive_batch
        loads = orjson.loads
        parse = trade_from_payload
        microseconds = self._microseconds
        status = self.status
        current_time = trio.current_time
        try:
            while True:
                frames = await receive_batch()
                self.last_frame_at = status.last_frame_at = current_time()
                status.frames_received += len(frames)
                status.read_ahead_bytes = self.socket.read_ahead_bytes
                ticks: list[Tick] = []
                for frame in frames:
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
                        ticks.append(parse(data, microseconds=microseconds))
                    except FrameError as error:
                        self._on_event(data, error, frame, message.get("stream"))
                if ticks:
                    self.trades_received += len(ticks)
                    await send(ticks)
        except SocketClosed as closed:
            self.end_reason = str(closed)
            self._pending.close(closed)

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
