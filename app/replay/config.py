"""The simulator's configuration: where its market comes from, its limits, and the faults it injects."""

from __future__ import annotations

from pathlib import Path

import attrs

from app.model import Tick
from app.replay.sources import LoadedRecording


@attrs.frozen(slots=True)
class ReplaySource:
    """Replay a recording file: at its original pace (``speed=1``), ``speed`` times faster, or unpaced
    (``speed=0``: as fast as the slowest subscriber takes it). ``loop`` repeats it with ids and times shifted."""

    path: Path = attrs.field(converter=Path)
    speed: float = 1.0
    loop: bool = False
    # Already loaded (``sources.load_recording``): the simulator then starts without reading the file in a
    # thread, which matters under a MockClock (its autojump does not wait for threads).
    recording: LoadedRecording | None = attrs.field(default=None, eq=False, repr=False)


@attrs.frozen(slots=True)
class SyntheticSource:
    """A seeded random market of ``symbols`` symbols and ``rate`` trades per second over all of them."""

    symbols: int = 3
    rate: float = 10.0
    seed: int = 0
    speed: float = 1.0
    # Trade times start here (epoch ms); None means the wall clock at start.
    start_ms: int | None = None


@attrs.frozen(slots=True)
class ManualSource:
    """No automatic market: tests publish exactly the trades they want with ``Simulator.publish``."""

    symbols: tuple[str, ...] = ()
    # Published before anything else, e.g. a history for REST backfill.
    initial: tuple[Tick, ...] = ()


Source = ReplaySource | SyntheticSource | ManualSource


@attrs.frozen(slots=True)
class Limits:
    """Binance spot's limits (BINANCE.md); tests shrink the time-based ones or run under a MockClock."""

    # More incoming messages (JSON requests, pings and pongs) than this within one second closes the socket.
    max_incoming_per_second: int = 5
    max_streams: int = 1024
    # Connection attempts per IP (all clients are loopback, so: in total) within the window; beyond them
    # the handshake is refused with HTTP 429.
    max_connection_attempts: int = 300
    connection_attempt_window: float = 300.0
    ping_interval: float = 20.0
    pong_timeout: float = 60.0
    # Binance closes every connection at 24 hours with a normal close frame.
    max_connection_age: float = 24 * 3600.0
    rest_weight_per_minute: int = 6000
    # Per connection: pending batches of frames before the connection counts as too slow and is dropped.
    outbox_batches: int = 1024
    # The publishing loop hands out at most this many events per wake-up.
    publish_batch: int = 1000


@attrs.frozen(slots=True)
class Faults:
    """Faults from the start; a running simulator also takes them on demand (``Simulator.stall`` ...)."""

    # Reset (TCP RST, no close frame) every connection after it has been sent this many frames.
    drop_after_frames: int | None = None
    # Reset a connection with this probability after each frame it is sent.
    drop_probability: float = 0.0
    # Send a malformed frame with this probability after each frame.
    malformed_probability: float = 0.0
    seed: int = 0
    # Symbols that stop trading: in BREAK (listed, no trades), or delisted (gone from exchangeInfo, -1121 over
    # REST); from the start, or ``symbols_stop_after`` seconds after it (while streaming).
    break_symbols: tuple[str, ...] = ()
    delisted_symbols: tuple[str, ...] = ()
    symbols_stop_after: float | None = None


@attrs.frozen(slots=True)
class SimulatorConfig:
    source: Source = attrs.field(factory=ManualSource)
    host: str = "127.0.0.1"
    ws_port: int = 0
    rest_port: int = 0
    limits: Limits = attrs.field(factory=Limits)
    faults: Faults = attrs.field(factory=Faults)
    # Published trades kept per symbol for REST (oldest evicted first).
    retained_trades: int = 1_000_000
    # Hold the source back until this many connections have subscribed to something, so a test's client
    # sees a replay from its first frame.
    wait_for_subscribers: int = 0
    # Trades published by hand go out (WebSocket and REST) with their own digits instead of Binance's 8
    # decimals, so a test that publishes "100.0" sees "100.0" (the pytest plugin's manual market).
    exact_decimals: bool = False
