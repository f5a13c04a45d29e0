"""marketdata: Binance trades as exact ticks and candles. The supported Python API is the names in ``__all__``
(README, "Use from Python"): embed the service (``open_service``), talk to a running one (``Client``,
``open_feed``), and test with the pytest plugin (``app.testing.plugin``).

The names are imported on first use, so ``import app.model`` (or the simulator) does not load the service.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from app.client import Client, Feed, FeedInterrupted, open_feed
    from app.embed import MarketData, Subscription, SubscriptionCutOff, open_service
    from app.errors import ServiceError
    from app.model import Candle, Gap, HealthProblem, ServiceHealth, SymbolSummary, Tick
    from app.settings import Settings, SettingsError

# Name -> the module that defines it.
_PUBLIC = {
    "Settings": "app.settings",
    "SettingsError": "app.settings",
    "open_service": "app.embed",
    "MarketData": "app.embed",
    "Subscription": "app.embed",
    "SubscriptionCutOff": "app.embed",
    "Client": "app.client",
    "open_feed": "app.client",
    "Feed": "app.client",
    "FeedInterrupted": "app.client",
    "ServiceError": "app.errors",
    "Tick": "app.model",
    "Candle": "app.model",
    "Gap": "app.model",
    "SymbolSummary": "app.model",
    "ServiceHealth": "app.model",
    "HealthProblem": "app.model",
}

__all__ = [
    "Candle",
    "Client",
    "Feed",
    "FeedInterrupted",
    "Gap",
    "HealthProblem",
    "MarketData",
    "ServiceError",
    "ServiceHealth",
    "Settings",
    "SettingsError",
    "Subscription",
    "SubscriptionCutOff",
    "SymbolSummary",
    "Tick",
    "open_feed",
    "open_service",
]


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'app' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
