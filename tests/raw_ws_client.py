"""A bare wsproto WebSocket client for tests: no automatic pong, and a TCP reset surfaces as
``trio.BrokenResourceError`` instead of hiding behind a generic close."""

from __future__ import annotations

from collections import deque

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Event, Request

from app.replay.simulator import Simulator


class RawClient:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.protocol = WSConnection(ConnectionType.CLIENT)
        self.pending: deque[Event] = deque()

    @classmethod
    async def connect(cls, simulator: Simulator, target: str = "/ws") -> RawClient:
        client = cls(await trio.open_tcp_stream("127.0.0.1", simulator.ws_port))
        await client.send(Request(host="127.0.0.1", target=target))
        assert isinstance(await client.next_event(), AcceptConnection)
        return client

    async def send(self, *events: Event) -> None:
        await self.stream.send_all(b"".join(self.protocol.send(event) for event in events))

    async def next_event(self) -> Event | None:
        """The next event, or None at a clean end of the TCP stream."""
        while not self.pending:
            data = await self.stream.receive_some(65536)
            if not data:
                return None
            self.protocol.receive_data(data)
            self.pending.extend(self.protocol.events())
        return self.pending.popleft()

    async def until(self, kind: type[Event]) -> Event:
        """The next event of this kind (others are skipped); fails if the stream ends first."""
        while True:
            event = await self.next_event()
            assert event is not None, f"the stream ended before a {kind.__name__}"
            if isinstance(event, kind):
                return event
