"""The stream client: sharded WebSocket connections that reconnect, switch before Binance cuts them, and
change their subscriptions live.

Shape: one task per shard (≤ ``max_streams_per_connection`` streams each), one task per open connection
under a cancel scope that is the reset button. A shard reconnects after any failure (connect error, reset,
close frame, stall caught by the watchdog) with full-jitter exponential backoff, within Binance's
connection-attempt budget. Before the 24-hour cut, or as soon as a ``serverShutdown`` event arrives, it opens
the replacement first, lets both run for a moment (the sequencer drops the duplicates by trade id), then
closes the old one. Every new connection is reconciled with the shard's desired streams before it carries
control requests, so the desired set survives reconnects.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence

import attrs
import trio

from app.backoff import Backoff
from app.ingest.connection import ACK_TIMEOUT_SECONDS, StreamConnection
from app.ingest.control import ControlError, ControlTimeout
from app.ingest.reconnect import HEALTHY_AFTER_SECONDS, RECONNECT_BACKOFF, AttemptBudget
from app.ingest.status import ConnectionStatus, IngestStatus
from app.ingest.stream_socket import CONNECT_TIMEOUT_SECONDS, HandshakeFailed, SocketClosed, open_stream_socket
from app.ingest.urls import combined_stream_url, symbol_of_stream, uses_microseconds
from app.model import Tick

log = logging.getLogger(__name__)

# Binance cuts connections at 24 h; switch well before.
MAX_CONNECTION_AGE_SECONDS = 23.5 * 3600
# Old and new connection both run this long after a switch, so the old one drains what it already holds.
SWITCH_OVERLAP_SECONDS = 2.0
# Streams put into the URL; the rest (up to the shard's cap) are subscribed right after connecting.
URL_STREAMS_LIMIT = 200
# A connection that delivered this many trades counts as healthy, as does one that lived for HEALTHY_AFTER.
HEALTHY_AFTER_TRADES = 100
NETWORK_ERRORS = (OSError, trio.BrokenResourceError, HandshakeFailed, SocketClosed)


class ConnectionHandle:
    """One connection's lifecycle as the shard sees it: up, retiring (wants a replacement), ended."""

    def __init__(self) -> None:
        self.scope = trio.CancelScope()
        self.connection: StreamConnection | None = None
        self.up = False
        self.retiring = ""
        self.ended = False
        self.up_at: float | None = None
        self.ended_at: float | None = None
        self._changed = trio.Event()

    def _change(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def set_up(self) -> None:
        self.up = True
        self.up_at = trio.current_time()
        self._change()

    def retire(self, reason: str) -> None:
        if not self.retiring:
            self.retiring = reason
            self._change()

    def set_ended(self) -> None:
        self.ended = True
        self.ended_at = trio.current_time()
        self._change()

    async def wait_up_or_ended(self) -> None:
        while not (self.up or self.ended):
            await self._changed.wait()

    async def wait_ended_or_retiring(self) -> None:
        while not (self.ended or self.retiring):
            await self._changed.wait()

    async def wait_ended(self) -> None:
        while not self.ended:
            await self._changed.wait()

    def was_healthy(self, healthy_after: float) -> bool:
        if self.connection is not None and self.connection.trades_received >= HEALTHY_AFTER_TRADES:
            return True
        if self.up_at is None:
            return False
        end = self.ended_at if self.ended_at is not None else trio.current_time()
        return end - self.up_at >= healthy_after


@attrs.define(eq=False)
class Shard:
    name: str
    # The streams this shard should carry, in subscription order.
    streams: dict[str, None]
    # The connection control requests go to (None while reconnecting).
    active: StreamConnection | None = None
    scope: trio.CancelScope = attrs.Factory(trio.CancelScope)
    _changed: trio.Event = attrs.Factory(trio.Event)

    def set_active(self, connection: StreamConnection | None) -> None:
        self.active = connection
        self._changed.set()
        self._changed = trio.Event()

    async def wait_changed(self) -> None:
        await self._changed.wait()


class StreamClient:
    """Owns the shards; ``run`` is the task. ``subscribe``/``unsubscribe`` change streams on open connections."""

    def __init__(
        self,
        ws_url: str,
        status: IngestStatus,
        live_ticks: trio.MemorySendChannel[list[Tick]],
        *,
        max_streams_per_connection: int = 1024,
        stale_after_seconds: float = 30.0,
        max_connection_age: float = MAX_CONNECTION_AGE_SECONDS,
        switch_overlap: float = SWITCH_OVERLAP_SECONDS,
        ack_timeout: float = ACK_TIMEOUT_SECONDS,
        connect_timeout: float = CONNECT_TIMEOUT_SECONDS,
        healthy_after: float = HEALTHY_AFTER_SECONDS,
        attempt_budget: AttemptBudget | None = None,
        rng: random.Random | None = None,
        on_connected: Callable[[list[str]], None] | None = None,
    ) -> None:
        self._ws_url = ws_url
        self._microseconds = uses_microseconds(ws_url)
        self._status = status
        # Every connection sends the trades of each socket read here (the client does not close it: the
        # connections share it, and ``stream_trades`` owns it).
        self._live_ticks = live_ticks
        self._max_streams = max_streams_per_connection
        self._stale_after = stale_after_seconds
        self._max_age = max_connection_age
        self._switch_overlap = switch_overlap
        self._ack_timeout = ack_timeout
        self._connect_timeout = connect_timeout
        self._healthy_after = healthy_after
        self._budget = attempt_budget if attempt_budget is not None else AttemptBudget()
        self._rng = rng if rng is not None else random.Random()
        # Told the symbols of every connection once it is up and subscribed (the sequencer checks them for
        # trades missed meanwhile).
        self._on_connected = on_connected
        self._shards: list[Shard] = []
        self._shard_of: dict[str, Shard] = {}
        self._shard_numbers = 0
        self._nursery: trio.Nursery | None = None

    @property
    def streams(self) -> tuple[str, ...]:
        return tuple(self._shard_of)

    @property
    def shards(self) -> tuple[Shard, ...]:
        return tuple(self._shards)

    async def run(
        self, streams: Sequence[str], *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Runs the shards for ``streams`` until cancelled (reports started at once: connecting may take long)."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            unique = list(dict.fromkeys(streams))
            for start in range(0, max(len(unique), 1), self._max_streams):
                self._start_shard(unique[start : start + self._max_streams])
            task_status.started()

    # --- live subscription changes ---

    async def subscribe(self, stream: str) -> None:
        """Adds ``stream``: SUBSCRIBE on an open connection with room (awaiting the ack), or a new shard."""
        if stream in self._shard_of:
            return
        shard = next((shard for shard in self._shards if len(shard.streams) < self._max_streams), None)
        if shard is None:
            shard = self._start_shard([stream])
        else:
            shard.streams[stream] = None
        self._shard_of[stream] = shard
        # Room for one unanswered request (which replaces the connection) and the retry on the next one.
        with trio.fail_after(self._ack_timeout * 2):
            await self._confirm(shard, stream)

    async def _confirm(self, shard: Shard, stream: str) -> None:
        while True:
            connection = shard.active
            if connection is None:
                await shard.wait_changed()
                continue
            if stream in connection.subscribed:
                return
            try:
                await connection.subscribe([stream])
                return
            except ControlTimeout as error:
                # A connection that does not answer is broken: replace it (the next one carries the stream).
                connection.abort(f"control request unanswered: {error}")
                await shard.wait_changed()
            except SocketClosed:
                # The connection is going; the next one subscribes the shard's streams when it opens.
                await shard.wait_changed()

    def discard(self, stream: str) -> Shard | None:
        """Removes ``stream`` from the desired set only (no request): the next connection will not carry it."""
        shard = self._shard_of.pop(stream, None)
        if shard is None:
            return None
        shard.streams.pop(stream, None)
        if not shard.streams and shard is not self._shards[0]:
            shard.scope.cancel()
            self._shards.remove(shard)
            return None
        return shard

    async def unsubscribe(self, stream: str) -> None:
        """Removes ``stream``: UNSUBSCRIBE on its connection (awaiting the ack); an emptied extra shard closes."""
        shard = self.discard(stream)
        if shard is None:
            return
        connection = shard.active
        if connection is not None and stream in connection.subscribed:
            try:
                with trio.fail_after(self._ack_timeout):
                    await connection.unsubscribe([stream])
            except (ControlError, SocketClosed, trio.TooSlowError) as error:
                # Not wanted any more either way: the next connection will not carry it, and the sequencer
                # drops whatever still arrives.
                log.warning("unsubscribe not confirmed stream=%s error=%s", stream, error)

    # --- shards and connections ---

    def _start_shard(self, streams: Sequence[str]) -> Shard:
        assert self._nursery is not None, "StreamClient.run is not running"
        shard = Shard(name=f"shard-{self._shard_numbers}", streams=dict.fromkeys(streams))
        self._shard_numbers += 1
        self._shards.append(shard)
        for stream in streams:
            self._shard_of[stream] = shard
        self._nursery.start_soon(self._run_shard, shard)
        return shard

    async def _run_shard(self, shard: Shard) -> None:
        backoff = Backoff(RECONNECT_BACKOFF, rng=self._rng)
        with shard.scope:
            async with trio.open_nursery() as nursery:
                current = await self._open(shard, nursery, backoff)
                while True:
                    await current.wait_ended_or_retiring()
                    if current.ended:
                        if current.was_healthy(self._healthy_after):
                            backoff.reset()
                        await trio.sleep(backoff.next_delay())
                        current = await self._open(shard, nursery, backoff)
                        continue
                    # Make before break: the replacement first, then a short overlap, then the old one goes.
                    log.info("switching connections shard=%s reason=%s", shard.name, current.retiring)
                    self._status.connection_switches += 1
                    replacement = await self._open(shard, nursery, backoff)
                    old = current
                    with trio.move_on_after(self._switch_overlap):
                        await old.wait_ended()
                    old.scope.cancel()
                    current = replacement
        self._status.connections.pop(shard.name, None)

    async def _open(self, shard: Shard, nursery: trio.Nursery, backoff: Backoff) -> ConnectionHandle:
        """A connection that is up and reconciled, retrying with backoff within the attempt budget."""
        while True:
            while (wait := self._budget.delay(trio.current_time())) > 0:
                log.warning("connection attempt budget used up: waiting %.1f s", wait)
                await trio.sleep(wait)
            self._budget.record(trio.current_time())
            handle = ConnectionHandle()
            nursery.start_soon(self._run_connection, shard, handle)
            await handle.wait_up_or_ended()
            if handle.up:
                return handle
            self._status.connect_failures += 1
            delay = backoff.next_delay()
            log.warning("connect failed shard=%s retry_in=%.2f failures=%d", shard.name, delay, backoff.failures)
            await trio.sleep(delay)

    async def _run_connection(self, shard: Shard, handle: ConnectionHandle) -> None:
        url_streams = list(shard.streams)[:URL_STREAMS_LIMIT]
        url = combined_stream_url(self._ws_url, url_streams)
        status = self._status.connections.get(shard.name)
        if status is None:
            status = self._status.connections[shard.name] = ConnectionStatus(shard.name, url)
        else:
            status.reconnects += 1
            status.url = url
        self._status.connect_attempts += 1
        connection: StreamConnection | None = None
        try:
            with handle.scope:
                async with open_stream_socket(url, connect_timeout=self._connect_timeout) as socket:
                    connection = StreamConnection(
                        shard.name, socket, url_streams, status, self._status,
                        microseconds=self._microseconds, ack_timeout=self._ack_timeout,
                    )
                    handle.connection = connection
                    status.connected = True
                    status.connected_at = trio.current_time()
                    log.info("connected shard=%s streams=%d", shard.name, len(shard.streams))
                    await self._serve_connection(shard, handle, connection)
        except NETWORK_ERRORS as error:
            if connection is not None and not connection.end_reason:
                connection.end_reason = repr(error)
            if connection is None:
                log.warning("connect failed shard=%s url=%s error=%r", shard.name, url, error)
        finally:
            if shard.active is connection and connection is not None:
                shard.set_active(None)
            if connection is not None and connection.end_reason:
                self._status.disconnects += 1
            if connection is not None:
                # Another connection of the shard (a switch) may still be up.
                status.connected = shard.active is not None
                status.streams = len(shard.active.subscribed) if shard.active is not None else 0
                if connection.end_reason:
                    log.warning("disconnected shard=%s reason=%s", shard.name, connection.end_reason)
                else:
                    log.info("closed shard=%s (switch, unsubscribe or shutdown)", shard.name)
            handle.set_ended()

    async def _serve_connection(self, shard: Shard, handle: ConnectionHandle, connection: StreamConnection) -> None:
        async with trio.open_nursery() as nursery:
            connection.scope = nursery.cancel_scope
            nursery.start_soon(self._receive, connection, nursery.cancel_scope)
            nursery.start_soon(self._watchdog, connection, nursery.cancel_scope)
            nursery.start_soon(self._retire_when_due, connection, handle)
            try:
                await self._reconcile(shard, connection)
            except (ControlError, SocketClosed) as error:
                connection.end_reason = f"subscribing failed: {error}"
                nursery.cancel_scope.cancel()
                return
            shard.set_active(connection)
            connection.status.streams = len(connection.subscribed)
            handle.set_up()
            if self._on_connected is not None:
                # Trades may have been missed before this connection was up (a reconnect, a switch whose old
                # connection died first, a restart from stored ids): have the shard's symbols checked now.
                self._on_connected([symbol_of_stream(stream) for stream in connection.subscribed])

    async def _receive(self, connection: StreamConnection, scope: trio.CancelScope) -> None:
        await connection.receive(self._live_ticks)
        scope.cancel()

    async def _reconcile(self, shard: Shard, connection: StreamConnection) -> None:
        """Brings the connection's streams to the shard's desired set (which may change meanwhile)."""
        while True:
            missing = [
                stream for stream in shard.streams
                if stream not in connection.subscribed and stream not in connection.rejected
            ]
            unwanted = [stream for stream in connection.subscribed if stream not in shard.streams]
            if not missing and not unwanted:
                return
            if missing:
                try:
                    await connection.subscribe(missing)
                except ControlTimeout:
                    raise
                except ControlError as error:
                    # One refused stream must not cost the others their connection.
                    refused = [stream for stream in missing if stream not in connection.subscribed]
                    connection.rejected.update(refused)
                    log.error("streams refused shard=%s streams=%s error=%s", shard.name, ",".join(refused), error)
            if unwanted:
                try:
                    await connection.unsubscribe(unwanted)
                except ControlTimeout:
                    raise
                except ControlError as error:
                    log.warning("unsubscribe refused shard=%s error=%s", shard.name, error)

    async def _watchdog(self, connection: StreamConnection, scope: trio.CancelScope) -> None:
        """Cancels a connection that delivered nothing for ``stale_after`` seconds while streams are subscribed."""
        while True:
            last = connection.last_frame_at if connection.last_frame_at is not None else connection.opened_at
            remaining = last + self._stale_after - trio.current_time()
            if remaining > 0:
                await trio.sleep(remaining)
                continue
            if not connection.subscribed:
                connection.last_frame_at = trio.current_time()  # nothing is expected: start a new period
                continue
            self._status.stale_connections += 1
            connection.end_reason = f"stale: no frame for {self._stale_after:.1f} s"
            scope.cancel()
            return

    async def _retire_when_due(self, connection: StreamConnection, handle: ConnectionHandle) -> None:
        with trio.move_on_after(self._max_age):
            await connection.shutdown_announced.wait()
            handle.retire("serverShutdown")
            return
        handle.retire(f"connection age {self._max_age:.0f} s")
