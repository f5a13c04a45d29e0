"""``python -m bench.websockets_reader serve …``: the service with ``websockets``' sans-I/O client protocol
parsing the exchange's frames in place of ``app.ingest.frame_reader.FrameReader``: the same 64 KiB reads, the
same read-ahead and batching, only the parser differs. ``python -m bench --baseline websockets-reader`` runs
it in the baseline column (``docs/decisions/0001-exchange-websocket-client.md``)."""

from __future__ import annotations

import sys

from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.uri import parse_uri

from app import cli
from app.ingest import stream_socket
from app.ingest.frame_reader import ABNORMAL_CLOSURE, INVALID_DATA, MAX_MESSAGE_BYTES, Close, Received


class WebsocketsFrameReader:
    """``FrameReader``'s interface over ``websockets.client.ClientProtocol``: frames assembled into messages
    and text checked as UTF-8, as websockets' own connection classes do above the protocol."""

    def __init__(self, *, max_message_bytes: int = MAX_MESSAGE_BYTES) -> None:
        # The upgrade was done by the socket (h11): the protocol starts open.
        self._protocol = ClientProtocol(parse_uri("ws://exchange/"), state=State.OPEN, max_size=max_message_bytes)
        self._fragments: list[bytes] = []
        self._text = False
        self.close: Close | None = None

    def feed(self, data: bytes) -> Received:
        if self.close is not None:
            return Received([], [], self.close)
        protocol = self._protocol
        protocol.receive_data(data)
        messages: list[bytes] = []
        for event in protocol.events_received():
            assert isinstance(event, Frame)
            opcode = event.opcode
            if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
                self._text = opcode is Opcode.TEXT
                if event.fin:
                    self._deliver(bytes(event.data), messages)
                else:
                    self._fragments = [bytes(event.data)]
            elif opcode is Opcode.CONT:
                self._fragments.append(bytes(event.data))
                if event.fin:
                    self._deliver(b"".join(self._fragments), messages)
                    self._fragments = []
            if self.close is not None:
                break
        if self.close is None:
            if protocol.parser_exc is not None:
                code = protocol.close_sent.code if protocol.close_sent is not None else ABNORMAL_CLOSURE
                self.close = Close(code, f"protocol error: {protocol.parser_exc}")
            elif protocol.close_rcvd is not None:
                self.close = Close(protocol.close_rcvd.code, protocol.close_rcvd.reason)
        return Received(messages, [write for write in protocol.data_to_send() if write], self.close)

    def _deliver(self, message: bytes, messages: list[bytes]) -> None:
        if self._text and not message.isascii():
            try:
                message.decode("utf-8")
            except UnicodeDecodeError:
                self._protocol.fail(INVALID_DATA, "a text message that is not UTF-8")
                self.close = Close(INVALID_DATA, "protocol error: a text message that is not UTF-8")
                return
        messages.append(message)

    def feed_eof(self) -> Close:
        if self.close is None:
            self._protocol.receive_eof()
            self.close = Close(ABNORMAL_CLOSURE, "connection lost: TCP closed without a close frame")
        return self.close


if __name__ == "__main__":
    # The one substitution: the socket builds its parser from this name.
    setattr(stream_socket, "FrameReader", WebsocketsFrameReader)  # noqa: B010 (a bench-only substitution)
    sys.exit(cli.main())
