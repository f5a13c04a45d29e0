"""Prometheus metrics, read from the tasks' plain counters at scrape time.

Nothing here runs on the hot path: the ingest, store and feed tasks only bump ints; ``ServiceCollector`` turns
them into metric families when ``/metrics`` is scraped, on a registry that belongs to one app (no global
registry, so several services in one process, as in the tests, do not collide).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator

import attrs
import trio
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.registry import Collector

from app.ingest.status import IngestStatus, SymbolStatus
from app.store.aggregator import CandleFeed
from app.store.broadcast import ChannelDepth, OverflowPolicy
from app.store.latest import TickHub
from app.store.persist import PersistStatus
from app.web.client_limit import ClientLimit
from app.web.feed import FeedStats
from app.web.health import HealthSources, assess_health

PREFIX = "marketdata"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _counter(name: str, documentation: str, labels: list[str] | None = None) -> CounterMetricFamily:
    return CounterMetricFamily(f"{PREFIX}_{name}", documentation, labels=labels)


def _unlabelled(
    family: Callable[[str, str], CounterMetricFamily | GaugeMetricFamily], rows: Iterable[tuple[str, str, float]]
) -> Iterator[Metric]:
    """One metric family without labels per ``(name, documentation, value)``."""
    for name, documentation, value in rows:
        metric = family(name, documentation)
        metric.add_metric([], value)
        yield metric


def _gauge(name: str, documentation: str, labels: list[str] | None = None) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{PREFIX}_{name}", documentation, labels=labels)


@attrs.frozen
class MetricSources:
    """The counters /metrics reads at scrape time, each owned by its task."""

    ingest: IngestStatus
    ticks: TickHub
    candles: CandleFeed
    persist: PersistStatus
    health: HealthSources
    max_subscriptions_per_connection: int
    # How full the ingest -> fan-out channel is (None where no ingestion runs in this process).
    ingest_backlog: Callable[[], ChannelDepth] | None = None

    def channel_depths(self) -> list[ChannelDepth]:
        """How full the ingest channel and each subscriber channel are (in batches)."""
        backlog = [] if self.ingest_backlog is None else [self.ingest_backlog()]
        return [*backlog, *self.ticks.channel_depths(), *self.candles.channel_depths()]


# Per-symbol counters: (metric name, documentation, the status field it reads).
_PER_SYMBOL: tuple[tuple[str, str, Callable[[SymbolStatus], int]], ...] = (
    ("ticks_received", "Trades received from the exchange (live and backfilled).",
     lambda status: status.ticks_received),
    ("ticks_emitted", "Trades passed downstream after de-duplication and gap repair.",
     lambda status: status.ticks_emitted),
    ("duplicate_ticks_dropped", "Trades dropped because their id was already emitted.",
     lambda status: status.duplicates_dropped),
    ("gaps_found", "Trade-id gaps detected.", lambda status: status.gaps_found),
    ("gaps_repaired", "Trade-id gaps repaired by REST backfill.", lambda status: status.gaps_repaired),
    ("backfilled_trades", "Trades fetched over REST to repair gaps.", lambda status: status.trades_backfilled),
    ("gaps_unrepaired", "Trade-id gaps that could not be repaired.", lambda status: status.gaps_unrepaired),
    ("trades_lost", "Trades in unrepaired gaps (missing for good).", lambda status: status.trades_lost),
)


class ServiceCollector(Collector):
    def __init__(self, sources: MetricSources, feed: FeedStats, clients: ClientLimit) -> None:
        self._sources = sources
        self._feed = feed
        self._clients = clients

    def collect(self) -> Iterator[Metric]:
        yield from self._ingest_metrics()
        yield from self._store_metrics()
        yield from self._feed_metrics()

    def _ingest_metrics(self) -> Iterator[Metric]:
        ingest = self._sources.ingest
        for name, documentation, read in _PER_SYMBOL:
            family = _counter(name, documentation, ["symbol"])
            for symbol, status in ingest.symbols.items():
                family.add_metric([symbol], read(status))
            yield family
        unrepaired = _gauge("unrepaired_gaps", "Gaps that could not be repaired (their trades are missing).",
                            ["symbol"])
        backfilling = _gauge("backfilling", "1 while the symbol is backfilling missed trades.", ["symbol"])
        for symbol, status in ingest.symbols.items():
            unrepaired.add_metric([symbol], len(status.unrepaired_gaps))
            backfilling.add_metric([symbol], 1 if status.backfilling else 0)
        yield unrepaired
        yield backfilling

        yield from _unlabelled(_counter, (
            ("parse_errors", "Frames from the exchange that could not be parsed.", ingest.parse_errors),
            ("exchange_error_replies", "Error replies from the exchange to control requests.", ingest.error_replies),
            ("unknown_events", "Well-formed exchange events of kinds not consumed (skipped).", ingest.unknown_events),
            ("ticks_ignored", "Trades of symbols no longer subscribed (in flight while unsubscribing).",
             ingest.ticks_ignored),
            ("connect_attempts", "Connection attempts to the exchange.", ingest.connect_attempts),
            ("connect_failures", "Failed connection attempts to the exchange.", ingest.connect_failures),
            ("stale_connections", "Connections replaced because they went silent.", ingest.stale_connections),
            ("connection_switches", "Connections replaced make-before-break (24 h limit, serverShutdown).",
             ingest.connection_switches),
            ("rest_requests", "REST requests to the exchange (backfill, exchangeInfo).", ingest.rest_requests),
            ("rest_rate_limited", "REST answers 429/418 (rate limited).", ingest.rest_rate_limited),
            ("rest_errors", "Failed REST requests.", ingest.rest_errors),
            ("disconnects", "Open exchange connections lost without our asking (reset, close, stall).",
             ingest.disconnects),
            ("server_shutdowns", "serverShutdown events received from the exchange.", ingest.server_shutdowns),
            ("resume_mismatches", "Symbols whose stored last trade id was ahead of the exchange at start-up.",
             ingest.resume_mismatches),
            ("last_id_checks", "Checks of the exchange's last trade ids (24hr ticker) for missed trades.",
             ingest.last_id_checks),
            ("last_id_checks_failed", "Last-trade-id checks that failed (holes then found by the next trade).",
             ingest.last_id_checks_failed),
        ))

        reconnects = _counter("reconnects", "Reconnects of an exchange connection.", ["connection"])
        connected = _gauge("connection_up", "1 while the exchange connection is open.", ["connection"])
        frame_age = _gauge("connection_last_frame_age_seconds", "Seconds since the connection's last frame.",
                           ["connection"])
        read_ahead = _gauge("connection_read_ahead_bytes", "Bytes read from the exchange socket and not yet taken by "
                            "the pipeline, as of its last batch.", ["connection"])
        now = trio.current_time()
        for name, connection in ingest.connections.items():
            reconnects.add_metric([name], connection.reconnects)
            connected.add_metric([name], 1 if connection.connected else 0)
            read_ahead.add_metric([name], connection.read_ahead_bytes)
            if connection.last_frame_at is not None:
                frame_age.add_metric([name], max(0.0, now - connection.last_frame_at))
        yield reconnects
        yield connected
        yield frame_age
        yield read_ahead

        healthy = _gauge("healthy", "1 when /health answers 200.")
        healthy.add_metric([], 1 if assess_health(self._sources.health, now).ok else 0)
        yield healthy

    def _store_metrics(self) -> Iterator[Metric]:
        hub = self._sources.ticks
        published = _counter("ticks_published", "Trades published to subscribers by the fan-out.")
        published.add_metric([], hub.ticks_published)
        yield published
        cut_off = _counter("subscribers_cut_off",
                           "Subscribers disconnected because they fell behind, by where it was detected.", ["stage"])
        cut_off.add_metric(["ticks"], hub.subscribers_cut_off)
        cut_off.add_metric(["candles"], self._sources.candles.subscribers_cut_off)
        cut_off.add_metric(["websocket"], self._feed.subscribers_cut_off)
        yield cut_off
        counters = self._sources.candles.counters
        yield from _unlabelled(_counter, (
            ("backpressure_alarms", "Times an internal consumer's full buffer made the fan-out wait.",
             hub.backpressure_alarms),
            ("candle_revisions", "Closed candles corrected by a late trade (after a repaired gap).",
             counters.revisions),
            ("candles_closed", "Candles closed (every interval).", counters.candles_closed),
            ("empty_candles", "Candles closed without a trade.", counters.empty_candles),
            ("late_trades", "Trades for already-closed candles.", counters.late_trades),
            ("late_trades_unrevisable", "Late trades for candles no longer in memory (not corrected).",
             counters.late_trades_unrevisable),
            ("candle_seeds_requested", "Candles that began before their trades were seen, marked complete=false "
             "and asked for from the exchange (start-up, symbol added, resume).", counters.seeds_requested),
            ("candle_seeds_applied", "Such candles completed from the exchange's kline.", counters.seeds_applied),
            ("candles_incomplete", "Such candles left complete=false (REST refused or silent, too many trades).",
             counters.candles_incomplete),
            ("candle_updates_published", "Candle updates handed to candle subscribers.",
             self._sources.candles.candles_published),
        ))
        persist = self._sources.persist
        yield from _unlabelled(_counter, (
            ("ticks_persisted", "Ticks committed to the database.", persist.ticks_persisted),
            ("candles_persisted", "Candles committed to the database.", persist.candles_persisted),
            ("database_write_failures", "Database writes that failed (and were retried).", persist.write_failures),
            ("ticks_pruned", "Ticks deleted past the retention.", persist.ticks_pruned),
            ("ticks_unwritten", "Ticks that could not be held for a failing database: missing from it.",
             persist.ticks_unwritten),
            ("candles_unwritten", "Closed candles that could not be held for a failing database: missing from it.",
             persist.candles_unwritten),
            ("stored_candle_revisions", "Stored candles corrected by a late trade after they left memory.",
             persist.stored_candle_revisions),
            ("late_trades_not_stored", "Late trades whose candle is neither in memory nor stored.",
             persist.late_trades_not_stored),
        ))
        yield from _unlabelled(_gauge, (
            ("storage_failing", "1 while database writes fail (retried with backoff), else 0.",
             int(persist.failing_since is not None)),
            ("ticks_waiting_for_storage", "Ticks held in memory until a database write succeeds.",
             persist.ticks_waiting),
            ("candles_waiting_for_storage", "Closed candles held in memory until a database write succeeds.",
             persist.candles_waiting),
        ))

        depth = _gauge("channel_depth", "Items waiting in a channel: ticks for ingest, batches for subscribers "
                       "(websocket_max: the fullest WebSocket client's).", ["channel"])
        capacity = _gauge("channel_capacity", "Buffer size of a channel (ticks for ingest, batches for "
                          "subscribers).", ["channel"])
        feed_depth = 0
        for channel in self._sources.channel_depths():
            if channel.policy is OverflowPolicy.CUT_OFF:  # a feed client: one gauge for the fullest
                feed_depth = max(feed_depth, channel.used)
                continue
            depth.add_metric([channel.name], channel.used)
            capacity.add_metric([channel.name], channel.size)
        depth.add_metric(["websocket_max"], feed_depth)
        yield depth
        yield capacity

    def _feed_metrics(self) -> Iterator[Metric]:
        feed = self._feed
        clients = self._clients
        yield from _unlabelled(_gauge, (
            ("websocket_connections", "Open WebSocket feed connections.", feed.connections),
            ("websocket_clients", "WebSocket clients admitted (handshaking or served), against "
             "websocket_clients_limit.", clients.current),
            ("websocket_clients_limit", "The most WebSocket clients served at once (MAX_WS_CLIENTS).",
             clients.limit),
            ("websocket_subscriptions",
             "Subscriptions held by WebSocket connections (one per symbol and channel, \"*\" one).",
             feed.subscriptions),
            ("websocket_max_subscriptions_per_connection",
             "MAX_SUBSCRIPTIONS_PER_CONNECTION: subscriptions one WebSocket connection may hold.",
             self._sources.max_subscriptions_per_connection),
        ))
        yield from _unlabelled(_counter, (
            ("websocket_clients_refused", "WebSocket clients refused with 503 (MAX_WS_CLIENTS reached).",
             clients.refused),
            ("websocket_messages_rejected", "Client messages answered with an error.", feed.messages_rejected),
            ("websocket_subscriptions_refused", "Subscribe requests refused: over MAX_SUBSCRIPTIONS_PER_CONNECTION.",
             feed.subscriptions_refused),
        ))
        frames = _counter("websocket_frames_sent", "Data frames sent to WebSocket subscribers.", ["channel"])
        frames.add_metric(["ticks"], feed.tick_frames)
        frames.add_metric(["candles"], feed.candle_frames)
        yield frames
        items = _counter("websocket_items_sent", "Ticks and candles sent to WebSocket subscribers.", ["channel"])
        items.add_metric(["ticks"], feed.ticks_sent)
        items.add_metric(["candles"], feed.candles_sent)
        yield items

        lag = _gauge("end_to_end_lag_last_seconds",
                     "Exchange event time to WebSocket send time, newest tick of the last tick frame sent.")
        if feed.last_lag_seconds is not None:
            lag.add_metric([], feed.last_lag_seconds)
        yield lag
        yield SummaryMetricFamily(
            f"{PREFIX}_end_to_end_lag_seconds",
            "Exchange event time to WebSocket send time, newest tick of each tick frame.",
            count_value=feed.lag_samples,
            sum_value=feed.lag_seconds_total,
        )
        age = _gauge("last_tick_age_seconds", "Wall-clock seconds since the exchange time of the latest trade.",
                     ["symbol"])
        wall_ms = time.time() * 1000
        for symbol, tick in self._sources.ticks.latest().items():
            age.add_metric([symbol], max(0.0, (wall_ms - tick.event_time_ms) / 1000))
        yield age


def metrics_registry(sources: MetricSources, feed: FeedStats, clients: ClientLimit) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServiceCollector(sources, feed, clients))
    return registry


def render_metrics(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
