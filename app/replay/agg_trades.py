"""Binance's aggregate trades: consecutive trades of one taker order (same price, same side, same time) as one.

The simulator has no orders, so "one taker order" is read off the trades themselves: a trade joins the
aggregate before it when its id follows on and its price, side and time are the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

import attrs

from app.model import Tick


@attrs.frozen(slots=True)
class AggTrade:
    agg_id: int
    price: Decimal
    quantity: Decimal
    first_trade_id: int
    last_trade_id: int
    time_ms: int
    is_buyer_maker: bool


def joins(previous: Tick, tick: Tick) -> bool:
    """Whether ``tick`` belongs to the same aggregate trade as ``previous``, the trade published before it."""
    return (
        tick.trade_id == previous.trade_id + 1
        and tick.trade_time_ms == previous.trade_time_ms
        and tick.price == previous.price
        and tick.is_buyer_maker == previous.is_buyer_maker
    )


def group(ticks: Sequence[Tick], agg_ids: Sequence[int]) -> list[AggTrade]:
    """The aggregates of ``ticks`` (whole aggregates, in order), ``agg_ids[i]`` being the aggregate of tick i."""
    out: list[AggTrade] = []
    start = 0
    for index in range(1, len(ticks) + 1):
        if index == len(ticks) or agg_ids[index] != agg_ids[start]:
            first, last = ticks[start], ticks[index - 1]
            quantity = sum((tick.quantity for tick in ticks[start + 1 : index]), first.quantity)
            out.append(AggTrade(agg_ids[start], first.price, quantity, first.trade_id, last.trade_id,
                                first.trade_time_ms, first.is_buyer_maker))
            start = index
    return out
