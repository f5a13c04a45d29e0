"""Ticks and candles rendered to JSON for the ``/ws`` feed, each object once however many clients send it."""

from __future__ import annotations

from collections.abc import Sequence

import orjson

from app.convert import api_converter
from app.model import Candle, Tick


class RenderCache:
    """Each tick or candle rendered to JSON once, however many subscribers send it.

    Rendering through the API converter is the costliest step per tick (mostly the two ISO timestamps); every
    subscriber is handed the same objects by the fan-out, so the first to send one renders it and the others reuse it.
    Keyed by object identity (the entry keeps the object alive, so an id is never reused while cached); cleared
    when full, which bounds memory.
    """

    def __init__(self, capacity: int = 20_000) -> None:
        self._capacity = capacity
        self._rendered: dict[int, tuple[object, orjson.Fragment]] = {}
        self.renders = 0
        self.hits = 0

    def render(self, items: Sequence[Tick] | Sequence[Candle]) -> list[orjson.Fragment]:
        rendered = self._rendered
        fragments = []
        for item in items:
            entry = rendered.get(id(item))
            if entry is not None and entry[0] is item:
                self.hits += 1
                fragments.append(entry[1])
                continue
            fragment = orjson.Fragment(orjson.dumps(api_converter.unstructure(item)))
            if len(rendered) >= self._capacity:
                rendered.clear()
            rendered[id(item)] = (item, fragment)
            self.renders += 1
            fragments.append(fragment)
        return fragments
