"""The WebSocket side: Binance spot market streams over trio-websocket, limits and faults included.

Each TCP connection runs one handler (``serve_connection``) with four tasks: requests in, frames out
(batched: several frames per socket write), keep-alive pings, and the 24-hour age limit. Every way a
connection ends goes through ``Client.terminate``; the handler then sends the close frame or the TCP reset.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import Ping, Pong, TextMessage

from app.replay.config import Limits
from app.replay.faults import FaultDice, malformed_frame, reset_tcp
from app.replay.hub import CLOSE_MARKER, RESET, Client, Hub, Termination
from app.replay.protocol import (
    Request,
    RequestError,
    Target,
    TargetError,
    parse_request,
    parse_target,
    result_response,
)

log = logging.getLogger(__name__)

# Binance answers requests with small frames; one socket write carries at most this many frames.
_WRITE_BATCH = 2048
_HANDSHAKE_TIMEOUT = 10.0
_CLOSE_TIMEOUT = 2.0
TOO_MANY_REQUESTS = Termination(1008, "Too many requests")
TOO_MANY_SUBSCRIPTIONS = Termination(1008, "Too many subscriptions")
PONG_TIMEOUT = Termination(1008, "Pong timeout")
AGE_LIMIT = Termination(1000, "Connection reached its 24-hour limit")


class SimWebSocket(WebSocketConnection):
    """trio-websocket's connection plus what an exchange needs and the public API lacks (it relies on
    trio-websocket 0.12 internals): a hook on incoming pings and pongs (they count towards Binance's
    message rate), pings that do not wait for their pong, and several frames per socket write."""

    def __init__(self, stream: trio.SocketStream) -> None:
        super().__init__(stream, WSConnection(ConnectionType.SERVER), message_queue_size=64)
        self.socket_stream = stream
        self.on_control: Callable[[str, bytes], None] | None = None

    async def _handle_ping_event(self, event: Ping) -> None:
        if self.on_control is not None:
            self.on_control("ping", bytes(event.payload))
        await super()._handle_ping_event(event)

    async def _handle_pong_event(self, event: Pong) -> None:
        if self.on_control is not None:
            self.on_control("pong", bytes(event.payload))
        await super()._handle_pong_event(event)

    async def send_ping(self, payload: bytes) -> None:
        await self._send(Ping(payload=payload))

    async def send_messages(self, messages: Sequence[str]) -> None:
        if self._close_reason:
            raise ConnectionClosed(self._close_reason)
        data = b"".join(self._wsproto.send(TextMessage(data=message)) for message in messages)
        async with self._stream_lock:
            try:
                await self._stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                await self._abort_web_socket()
                raise ConnectionClosed(self._close_reason) from None


async def serve_connection(hub: Hub, dice: FaultDice, stream: trio.SocketStream) -> None:
    """The handler for one TCP connection (``trio.serve_tcp``): a failing connection never stops the server."""
    try:
        await _serve_connection(hub, dice, stream)
    except* (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionClosed, OSError) as group:
        log.debug("connection ended with %r", group.exceptions[0])


async def _serve_connection(hub: Hub, dice: FaultDice, stream: trio.SocketStream) -> None:
    if hub.refusing():
        hub.counters.connections_refused += 1
        await reset_tcp(stream)
        return
    async with trio.open_nursery() as nursery:
        socket = SimWebSocket(stream)
        nursery.start_soon(socket._reader_task)
        target = await _handshake(hub, socket)
        if target is None:
            nursery.cancel_scope.cancel()
            await stream.aclose()
            return
        outbox_send, outbox_recv = trio.open_memory_channel[list[str]](hub.limits.outbox_batches)
        client = hub.add_client(target.combined, target.microseconds, outbox_send)
        log.debug("client=%d connected streams=%d", client.id, len(target.streams))
        try:
            if len(target.streams) > hub.limits.max_streams:
                client.terminate(TOO_MANY_SUBSCRIPTIONS)
            else:
                hub.subscribe(client, target.streams)
                await _run_client(hub, dice, client, socket, outbox_recv)
        finally:
            hub.remove_client(client)
            with trio.CancelScope(shield=True):
                await _finish(hub, client, socket, outbox_recv)
            outbox_recv.close()
            nursery.cancel_scope.cancel()


async def _handshake(hub: Hub, socket: SimWebSocket) -> Target | None:
    """The accepted target, or None when the handshake failed, timed out or was rejected."""
    with trio.move_on_after(_HANDSHAKE_TIMEOUT):
        request = await socket._get_request()
        if not hub.attempt_allowed():
            hub.counters.connections_rejected += 1
            await request.reject(429, body=b"Too many connection attempts")
            return None
        try:
            target = parse_target(request.path)
        except TargetError as error:
            hub.counters.connections_rejected += 1
            await request.reject(error.status, body=error.message.encode())
            return None
        await request.accept()
        return target if socket._wsproto.state == ConnectionState.OPEN else None
    return None


async def _finish(
    hub: Hub, client: Client, socket: SimWebSocket, outbox: trio.MemoryReceiveChannel[list[str]]
) -> None:
    termination = client.termination
    if termination is not None and termination.code is None:
        hub.counters.connections_reset += 1
        log.debug("client=%d reset reason=%s", client.id, termination.reason)
        await reset_tcp(socket.socket_stream)
        return
    code, reason = (1000, None) if termination is None else (termination.code, termination.reason)
    log.debug("client=%d closing code=%s reason=%s", client.id, code, reason)
    with trio.move_on_after(_CLOSE_TIMEOUT):
        # A close frame follows whatever was queued before it, as on a real socket.
        pending = _drain(outbox)
        if pending:
            await _send(hub, client, socket, pending)
        await socket.aclose(code or 1000, reason)
    await socket.socket_stream.aclose()


def _drain(outbox: trio.MemoryReceiveChannel[list[str]]) -> list[str]:
    frames: list[str] = []
    while True:
        try:
            frames.extend(outbox.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
            return frames


async def _run_client(
    hub: Hub, dice: FaultDice, client: Client, socket: SimWebSocket, outbox: trio.MemoryReceiveChannel[list[str]]
) -> None:
    limits = hub.limits

    def on_control(kind: str, payload: bytes) -> None:
        if kind == "ping":
            hub.counters.pings_received += 1
        else:
            hub.counters.pongs_received += 1
            if payload in client.pending_pings:
                client.pending_pings.clear()
                client.ping_outstanding_since = None
        _count_incoming(hub, client, limits)

    socket.on_control = on_control
    with client.scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_write_frames, hub, dice, client, socket, outbox)
            nursery.start_soon(_keep_alive, hub, client, socket, limits)
            nursery.start_soon(_age_limit, client, limits.max_connection_age)
            await _read_requests(hub, client, socket)
            if client.termination is None or client.termination.code is None:
                nursery.cancel_scope.cancel()
            # Otherwise the writer flushes what is queued, then ends the connection.


def _count_incoming(hub: Hub, client: Client, limits: Limits) -> None:
    """Binance's 5 messages per second: pings, pongs and requests all count, in any 1-second window."""
    now = trio.current_time()
    incoming = client.incoming
    incoming.append(now)
    while incoming and incoming[0] < now - 1.0:
        incoming.popleft()
    if len(incoming) > limits.max_incoming_per_second:
        hub.counters.rate_limit_closes += 1
        client.terminate(TOO_MANY_REQUESTS)


async def _read_requests(hub: Hub, client: Client, socket: SimWebSocket) -> None:
    while True:
        try:
            message = await socket.get_message()
        except ConnectionClosed:
            return
        hub.counters.control_messages += 1
        _count_incoming(hub, client, hub.limits)
        if client.termination is not None:
            return
        try:
            reply = _answer(hub, client, parse_request(message))
        except RequestError as error:
            reply = error.response()
            if error.code == 4:
                hub.send_to(client, [reply])
                client.terminate(TOO_MANY_SUBSCRIPTIONS)
                return
        hub.send_to(client, [reply])


def _answer(hub: Hub, client: Client, request: Request) -> str:
    streams = [str(name) for name in request.params]
    if request.method == "SUBSCRIBE":
        new = [name for name in dict.fromkeys(streams) if name not in client.subscriptions]
        if len(client.subscriptions) + len(new) > hub.limits.max_streams:
            raise RequestError(4, "Too many subscriptions", request.id)
        hub.subscribe(client, new)
        return result_response(request.id, None)
    if request.method == "UNSUBSCRIBE":
        hub.unsubscribe(client, streams)
        return result_response(request.id, None)
    if request.method == "LIST_SUBSCRIPTIONS":
        return result_response(request.id, list(client.subscriptions))
    if request.method == "SET_PROPERTY":
        client.combined = bool(request.params[1])
        return result_response(request.id, None)
    return result_response(request.id, client.combined)  # GET_PROPERTY combined


async def _write_frames(
    hub: Hub, dice: FaultDice, client: Client, socket: SimWebSocket, outbox: trio.MemoryReceiveChannel[list[str]]
) -> None:
    drop_after = dice.faults.drop_after_frames
    # The handler closes ``outbox`` after flushing it, so no ``async with`` here.
    while True:
        frames, closing = _take(outbox, await outbox.receive())
        if drop_after is not None and client.frames_sent + len(frames) >= drop_after:
            del frames[max(0, drop_after - client.frames_sent) :]
            await _send(hub, client, socket, frames)
            client.terminate(RESET)
            return
        if dice.active:
            frames, drop = _roll_dice(hub, dice, client, frames)
            await _send(hub, client, socket, frames)
            if drop:
                client.terminate(RESET)
                return
        else:
            await _send(hub, client, socket, frames)
        if closing:
            client.scope.cancel()  # the handler sends the close frame
            return


def _take(outbox: trio.MemoryReceiveChannel[list[str]], first: list[str]) -> tuple[list[str], bool]:
    """The first batch and whatever else is queued, up to a close marker (then True)."""
    if first is CLOSE_MARKER:
        return [], True
    frames = list(first)
    while len(frames) < _WRITE_BATCH:
        try:
            batch = outbox.receive_nowait()
        except trio.WouldBlock:
            break
        if batch is CLOSE_MARKER:
            return frames, True
        frames.extend(batch)
    return frames, False


def _roll_dice(hub: Hub, dice: FaultDice, client: Client, frames: list[str]) -> tuple[list[str], bool]:
    out: list[str] = []
    for frame in frames:
        out.append(frame)
        if dice.malformed():
            out.append(malformed_frame(dice.rng, frame, combined=client.combined, stream=_first_stream(client)))
            hub.counters.malformed_sent += 1
        if dice.drop():
            return out, True
    return out, False


def _first_stream(client: Client) -> str:
    return next(iter(client.subscriptions), "btcusdt@trade")


async def _send(hub: Hub, client: Client, socket: SimWebSocket, frames: list[str]) -> None:
    if not frames:
        return
    try:
        await socket.send_messages(frames)
    except ConnectionClosed:
        client.terminate(Termination(1000, "peer gone"))
        return
    client.frames_sent += len(frames)
    client.last_frame = frames[-1]
    hub.counters.frames_sent += len(frames)
    hub.changed()


async def _keep_alive(hub: Hub, client: Client, socket: SimWebSocket, limits: Limits) -> None:
    """A ping every ``ping_interval``; no pong to any of them within ``pong_timeout`` closes the socket."""
    next_ping = trio.current_time() + limits.ping_interval
    sequence = 0
    while True:
        deadline = next_ping
        if client.ping_outstanding_since is not None:
            deadline = min(deadline, client.ping_outstanding_since + limits.pong_timeout)
        await trio.sleep_until(deadline)
        now = trio.current_time()
        if client.ping_outstanding_since is not None and now >= client.ping_outstanding_since + limits.pong_timeout:
            client.terminate(PONG_TIMEOUT)
            return
        if now >= next_ping:
            next_ping += limits.ping_interval
            if hub.stalled():
                continue  # a stalled server sends nothing at all
            sequence += 1
            payload = f"{sequence}".encode()
            client.pending_pings.add(payload)
            if client.ping_outstanding_since is None:
                client.ping_outstanding_since = now
            try:
                await socket.send_ping(payload)
            except ConnectionClosed:
                client.terminate(Termination(1000, "peer gone"))
                return


async def _age_limit(client: Client, max_age: float) -> None:
    await trio.sleep(max_age)
    client.terminate(AGE_LIMIT)
