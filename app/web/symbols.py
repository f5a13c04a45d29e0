"""The web layer's view of the live symbol set: which symbols are served, and adding/removing them.

Errors of the ingest's ``SubscriptionManager`` become ``ApiError``s here, in one place.
"""

from __future__ import annotations

from app.ingest.subscriptions import (
    AlreadySubscribedError,
    ExchangeUnavailableError,
    NotSubscribedError,
    SubscriptionError,
    UnknownSymbolError,
)
from app.state import ServiceState
from app.web.errors import ApiError


def served_symbols(state: ServiceState) -> tuple[str, ...]:
    """The symbols currently subscribed at the exchange (configured ones plus those added at run time)."""
    return state.subscriptions.symbols()


def listed_symbols(state: ServiceState) -> tuple[str, ...]:
    """For ``/api/symbols``: the served symbols, then those no longer served because they stopped trading
    (delisted), so that what happened to them stays visible."""
    served = served_symbols(state)
    stopped = [symbol for symbol, status in state.ingest.symbols.items()
               if status.stopped_trading and symbol not in served]
    return (*served, *stopped)


async def add_symbol(state: ServiceState, symbol: str) -> None:
    """Subscribes ``symbol`` live (no reconnect); returns once the exchange acknowledged it."""
    try:
        await state.subscriptions.add(symbol)
    except AlreadySubscribedError as error:
        raise ApiError(409, "already_subscribed", str(error)) from None
    except UnknownSymbolError as error:
        raise ApiError(422, "unknown_symbol", str(error)) from None
    except ExchangeUnavailableError as error:
        raise ApiError(503, "exchange_unavailable", str(error)) from None
    except SubscriptionError as error:
        raise ApiError(502, "exchange_refused", str(error)) from None


async def remove_symbol(state: ServiceState, symbol: str) -> None:
    """Unsubscribes ``symbol`` live; its ticks stop at once."""
    try:
        await state.subscriptions.remove(symbol)
    except NotSubscribedError as error:
        raise ApiError(404, "not_subscribed", str(error)) from None
    except ExchangeUnavailableError as error:
        raise ApiError(503, "exchange_unavailable", str(error)) from None
    except SubscriptionError as error:
        raise ApiError(502, "exchange_refused", str(error)) from None
