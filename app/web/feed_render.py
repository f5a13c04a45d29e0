"""Candle updates rendered to JSON for the ``/ws`` feed, each once however many clients send it (ticks come
rendered from the hub: ``app.store.latest.FeedTick``)."""

from __future__ import annotations

from collections.abc import Sequence

import orjson

from app.convert import api_converter
from app.model import Candle, Tick


class RenderCache:
    """Each candle (or any model object) rendered to JSON once, however many subscribers send it.

    Rendering through the API converter is the costliest step per item (mostly the ISO timestamps); every
    subscriber is handed the same objects by the fan-out, so the first to send one renders it and the others reuse it.
    Keyed by object identity (the entry keeps the object alive, so an id is never reused while cached). Two
    generations of ``capacity`` entries each: when the current one is full it becomes the previous one, and a hit
    there moves the entry forward. Clearing everything when full (as before) made every client that lagged
    behind the fastest re-render its whole backlog right after each clear, which under load is what made them
    lag further; now an object stays cached for at least ``capacity`` newer renders. Memory: at most
    ``2 * capacity`` entries (20,000 by default, as before).
    """

    def __init__(self, capacity: int = 10_000) -> None:
        self._capacity = capacity
        self._rendered: dict[int, tuple[object, orjson.Fragment]] = {}
        self._previous: dict[int, tuple[object, orjson.Fragment]] = {}
        self.renders = 0
        self.hits = 0

    def render(self, items: Sequence[Tick] | Sequence[Candle]) -> list[orjson.Fragment]:
        rendered = self._rendered
        fragments = []
        for item in items:
            key = id(item)
            entry = rendered.get(key)
            if entry is not None and entry[0] is item:
                self.hits += 1
                fragments.append(entry[1])
                continue
            entry = self._previous.get(key)
            if entry is not None and entry[0] is item:
                self.hits += 1
            else:
                entry = (item, orjson.Fragment(orjson.dumps(api_converter.unstructure(item))))
                self.renders += 1
            if len(rendered) >= self._capacity:
                self._previous, self._rendered = rendered, {}
                rendered = self._rendered
            rendered[key] = entry
            fragments.append(entry[1])
        return fragments
