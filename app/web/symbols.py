"""The web layer's handle on the live symbol set: which symbols are served, their ingest state, and adding or
removing them.

Errors of the ingest's ``SubscriptionManager`` become ``ApiError``s here, in one place.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from app.ingest.status import SymbolStatus
from app.ingest.subscriptions import (
    AlreadySubscribedError,
    ExchangeUnavailableError,
    NotSubscribedError,
    SubscriptionError,
    SubscriptionManager,
    UnknownSymbolError,
)
from app.web.errors import ApiError


@attrs.frozen
class SymbolControl:
    manager: SubscriptionManager
    # The ingest tasks' per-symbol status (``IngestStatus.symbols``), read only.
    statuses: Mapping[str, SymbolStatus]

    def served(self) -> tuple[str, ...]:
        """The symbols currently subscribed at the exchange (configured ones plus those added at run time)."""
        return self.manager.symbols()

    def listed(self) -> tuple[str, ...]:
        """For ``/api/symbols``: the served symbols, then those no longer served because they stopped trading
        (delisted), so that what happened to them stays visible."""
        served = self.served()
        stopped = [symbol for symbol, status in self.statuses.items()
                   if status.stopped_trading and symbol not in served]
        return (*served, *stopped)

    def status(self, symbol: str) -> SymbolStatus | None:
        return self.statuses.get(symbol)

    async def add(self, symbol: str) -> None:
        """Subscribes ``symbol`` live (no reconnect); returns once the exchange acknowledged it."""
        try:
            await self.manager.add(symbol)
        except AlreadySubscribedError as error:
            raise ApiError(409, "already_subscribed", str(error)) from None
        except UnknownSymbolError as error:
            raise ApiError(422, "unknown_symbol", str(error)) from None
        except ExchangeUnavailableError as error:
            raise ApiError(503, "exchange_unavailable", str(error)) from None
        except SubscriptionError as error:
            raise ApiError(502, "exchange_refused", str(error)) from None

    async def remove(self, symbol: str) -> None:
        """Unsubscribes ``symbol`` live; its ticks stop at once."""
        try:
            await self.manager.remove(symbol)
        except NotSubscribedError as error:
            raise ApiError(404, "not_subscribed", str(error)) from None
        except ExchangeUnavailableError as error:
            raise ApiError(503, "exchange_unavailable", str(error)) from None
        except SubscriptionError as error:
            raise ApiError(502, "exchange_refused", str(error)) from None
