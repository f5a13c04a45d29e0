"""The parts a supervisor built (``serve``'s, or the api role's from bus state), each mutated only by its owner task.

Only wiring reads this bundle: ``create_app`` hands each web module its narrow handle from it, and the Python
API (``app.embed``) takes what it reads. No web module takes the whole of it.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs

from app.ingest.status import IngestStatus
from app.ingest.subscriptions import SubscriptionManager
from app.model import Tick
from app.settings import Settings
from app.store.aggregator import CandleFeed
from app.store.broadcast import ChannelDepth, Subscriber
from app.store.latest import TickHub
from app.store.persist import PersistStatus
from app.store.storage import Storage


@attrs.frozen
class ServiceState:
    settings: Settings
    # Owned by fan_out.
    hub: TickHub
    # Owned by aggregate: open candles, recent closed ones, candle updates (subscribe_candles).
    candles: CandleFeed
    storage: Storage
    # Owned by the ingest tasks.
    ingest: IngestStatus
    # The live symbol set (POST/DELETE /api/symbols); attached to the running ingest by stream_trades.
    subscriptions: SubscriptionManager = attrs.field(
        default=attrs.Factory(
            lambda self: SubscriptionManager(self.settings.symbols, self.ingest, configured=self.settings.symbols,
                                             memory=self.storage),
            takes_self=True,
        )
    )
    # Owned by the persistence tasks: what has been committed.
    persist: PersistStatus = attrs.Factory(PersistStatus)
    # How full the ingest -> fan-out channel is (None where a test runs without ingestion).
    ingest_backlog: Callable[[], ChannelDepth] | None = None
    # The database writer's subscription to the hub (None without one): /health watches how far behind it is.
    persistence: Subscriber[Tick] | None = None
