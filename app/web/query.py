"""Query parameters a route does not take are refused (400), never ignored: a misspelt ``?lmit=5`` or a second
``?symbol=`` silently dropped would answer another question than the one asked.

The parameters each route takes are read from the OpenAPI document, the one place they are declared, so what is
documented and what is accepted cannot drift apart; a route the document does not list (``/ws``, the dashboard's
a role process's ``/health`` and ``/metrics``) takes none. Static files take anything: a cache-busting ``?v=2`` asks
nothing of them.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping
from typing import Any

from quart import Quart, request, websocket
from quart.wrappers import Request, Websocket

from app.web.errors import ApiError

# (method, OpenAPI path such as "/api/candles/{symbol}") -> the names of the query parameters it takes.
AcceptedParameters = Mapping[tuple[str, str], frozenset[str]]


def accepted_parameters(document: Mapping[str, Any]) -> dict[tuple[str, str], frozenset[str]]:
    """The query parameters of every operation of an OpenAPI ``document``."""
    return {
        (method.upper(), path): frozenset(parameter["name"] for parameter in operation.get("parameters", ())
                                          if parameter["in"] == "query")
        for path, item in document["paths"].items()
        for method, operation in item.items()
    }


def check_query(given: Iterable[tuple[str, list[str]]], accepted: frozenset[str], route: str) -> None:
    """Raises a 400 ``unknown_parameter`` or ``repeated_parameter`` for ``given`` (name, values) pairs."""
    pairs = list(given)
    unknown = [name for name, _ in pairs if name not in accepted]
    if unknown:
        takes = f"it takes {', '.join(sorted(accepted))}" if accepted else "it takes none"
        guesses = [match for name in unknown for match in difflib.get_close_matches(name, accepted, n=1)]
        guess = f"; did you mean {guesses[0]!r}?" if len(unknown) == 1 and guesses else ""
        named = ", ".join(repr(name) for name in unknown)
        plural = "s" if len(unknown) > 1 else ""
        raise ApiError(400, "unknown_parameter", f"unknown query parameter{plural} {named} for {route}{guess}; {takes}")
    for name, values in pairs:
        if len(values) > 1:
            raise ApiError(400, "repeated_parameter",
                           f"query parameter {name!r} is given {len(values)} times for {route}; give it once")


def _openapi_path(rule: str) -> str:
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


def _check(received: Request | Websocket, accepted: AcceptedParameters) -> None:
    if received.url_rule is None:  # no route: the 404 or 405 follows
        return
    if received.url_rule.endpoint == "static":
        return
    method = "GET" if received.method == "HEAD" else received.method
    path = _openapi_path(received.url_rule.rule)
    if method == "OPTIONS":
        # Asked about the URL another method will use (a browser's preflight carries its query).
        takes = frozenset().union(*(names for (_, documented), names in accepted.items() if documented == path))
    else:
        takes = accepted.get((method, path), frozenset())
    check_query(received.args.lists(), takes, f"{method} {path}")


def register_query_check(app: Quart, accepted: AcceptedParameters) -> None:
    """Checks every request's and WebSocket upgrade's query against ``accepted`` before its route runs."""

    @app.before_request
    async def check_request_query() -> None:
        _check(request, accepted)

    @app.before_websocket
    async def check_websocket_query() -> None:
        _check(websocket, accepted)
