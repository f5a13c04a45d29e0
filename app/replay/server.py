"""The WebSocket side: Binance spot market streams, limits and faults included, on ``websocket.py``.

Each TCP connection runs one handler (``serve_connection``) with four tasks: requests in (with pings and pongs,
which count towards Binance's message rate), frames out (batched: several frames per socket write),
keep-alive pings, and the 24-hour age limit. Every way a connection ends goes through ``Client.terminate``;
the handler then sends the close frame or the TCP reset.
"""

from __future__ import annotations

import logging

import trio

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
from app.replay.websocket import ControlFrame, ServerWebSocket, WebSocketClosed

log = logging.getLogger(__name__)

# Binance answers requests with small frames; one socket write carries at most this many frames.
_WRITE_BATCH = 2048
_HANDSHAKE_TIMEOUT = 10.0
_CLOSE_TIMEOUT = 2.0
TOO_MANY_REQUESTS = Termination(1008, "Too many requests")
TOO_MANY_SUBSCRIPTIONS = Termination(1008, "Too many subscriptions")
PONG_TIMEOUT = Termination(1008, "Pong timeout")
AGE_LIMIT = Termination(1000, "Connection reached its 24-hour limit")
PEER_GONE = Termination(1000, "peer gone")


async def serve_connection(hub: Hub, dice: FaultDice, stream: trio.SocketStream) -> None:
    """The handler for one TCP connection (``trio.serve_tcp``): a failing connection never stops the server."""
    try:
        await _serve_connection(hub, dice, stream)
    except* (trio.BrokenResourceError, trio.ClosedResourceError, WebSocketClosed, OSError) as group:
        log.debug("connection ended with %r", group.exceptions[0])


async def _serve_connection(hub: Hub, dice: FaultDice, stream: trio.SocketStream) -> None:
    if hub.refusing():
        hub.counters.connections_refused += 1
        await reset_tcp(stream)
        return
    socket = ServerWebSocket(stream)
    target = await _handshake(hub, socket)
    if target is None:
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


async def _handshake(hub: Hub, socket: ServerWebSocket) -> Target | None:
    """The accepted target, or None when the handshake failed, timed out or was rejected."""
    with trio.move_on_after(_HANDSHAKE_TIMEOUT):
        try:
            path = await socket.receive_request()
            if not hub.attempt_allowed():
                hub.counters.connections_rejected += 1
                await socket.reject(429, b"Too many connection attempts")
                return None
            try:
                target = parse_target(path)
            except TargetError as error:
                hub.counters.connections_rejected += 1
                await socket.reject(error.status, error.message.encode())
                return None
            await socket.accept()
        except WebSocketClosed:
            return None
        return target
    return None


async def _finish(
    hub: Hub, client: Client, socket: ServerWebSocket, outbox: trio.MemoryReceiveChannel[list[str]]
) -> None:
    termination = client.termination
    if termination is not None and termination.code is None:
        hub.counters.connections_reset += 1
        log.debug("client=%d reset reason=%s", client.id, termination.reason)
        await reset_tcp(socket.stream)
        return
    code, reason = (1000, None) if termination is None else (termination.code, termination.reason)
    log.debug("client=%d closing code=%s reason=%s", client.id, code, reason)
    with trio.move_on_after(_CLOSE_TIMEOUT):
        # A close frame follows whatever was queued before it, as on a real socket.
        pending = _drain(outbox)
        if pending:
            await _send(hub, client, socket, pending)
        await socket.close(code or 1000, reason)
    await socket.stream.aclose()


def _drain(outbox: trio.MemoryReceiveChannel[list[str]]) -> list[str]:
    frames: list[str] = []
    while True:
        try:
            frames.extend(outbox.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
            return frames


async def _run_client(
    hub: Hub, dice: FaultDice, client: Client, socket: ServerWebSocket, outbox: trio.MemoryReceiveChannel[list[str]]
) -> None:
    limits = hub.limits
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


async def _read_requests(hub: Hub, client: Client, socket: ServerWebSocket) -> None:
    while True:
        try:
            message = await socket.receive()
        except WebSocketClosed:
            return
        if isinstance(message, ControlFrame):
            _control_frame(hub, client, message)
            if client.termination is not None:
                return
            continue
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


def _control_frame(hub: Hub, client: Client, frame: ControlFrame) -> None:
    if frame.kind == "ping":
        hub.counters.pings_received += 1
    else:
        hub.counters.pongs_received += 1
        if frame.payload in client.pending_pings:
            client.pending_pings.clear()
            client.ping_outstanding_since = None
    _count_incoming(hub, client, hub.limits)
    hub.changed()


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
    hub: Hub, dice: FaultDice, client: Client, socket: ServerWebSocket, outbox: trio.MemoryReceiveChannel[list[str]]
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


async def _send(hub: Hub, client: Client, socket: ServerWebSocket, frames: list[str]) -> None:
    if not frames:
        return
    try:
        await socket.send_messages(frames)
    except WebSocketClosed:
        client.terminate(PEER_GONE)
        return
    client.frames_sent += len(frames)
    client.last_frame = frames[-1]
    hub.counters.frames_sent += len(frames)
    hub.changed()


async def _keep_alive(hub: Hub, client: Client, socket: ServerWebSocket, limits: Limits) -> None:
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
            except WebSocketClosed:
                client.terminate(PEER_GONE)
                return


async def _age_limit(client: Client, max_age: float) -> None:
    await trio.sleep(max_age)
    client.terminate(AGE_LIMIT)
