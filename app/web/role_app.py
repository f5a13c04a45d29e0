"""The small HTTP app of a role process that serves no API (``marketdata ingest``, ``persist``): /health and
/metrics, so every process of a deployment can be watched the same way."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

import attrs
import orjson
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from quart import Response
from quart_trio import QuartTrio

from app.web.errors import register_error_handlers
from app.web.metrics import CONTENT_TYPE, render_metrics
from app.web.query import register_query_check

# What a role reports: (healthy, the body of /health).
HealthCheck = Callable[[], tuple[bool, dict[str, object]]]


class _StatusCollector(Collector):
    """Every numeric field of the role's status objects, read at scrape time (``marketdata_<role>_<field>``)."""

    def __init__(self, role: str, sources: Mapping[str, object]) -> None:
        self._role = role
        self._sources = sources

    def collect(self) -> Iterator[GaugeMetricFamily]:
        for prefix, source in self._sources.items():
            for name, value in attrs.asdict(source, recurse=False).items():  # type: ignore[arg-type]
                if isinstance(value, bool | int | float):
                    yield GaugeMetricFamily(f"marketdata_{self._role}_{prefix}_{name}", name.replace("_", " "),
                                            value=float(value))


def create_role_app(role: str, health: HealthCheck, statuses: Mapping[str, object]) -> QuartTrio:
    app = QuartTrio(f"marketdata-{role}")
    registry = CollectorRegistry()
    registry.register(_StatusCollector(role, statuses))
    register_error_handlers(app)
    # Neither route takes a query parameter.
    register_query_check(app, {})

    @app.get("/health")
    async def health_route() -> Response:
        ok, body = health()
        return Response(orjson.dumps({"status": "ok" if ok else "unhealthy", "role": role, **body}),
                        status=200 if ok else 503, content_type="application/json")

    @app.get("/metrics")
    async def metrics_route() -> Response:
        return Response(render_metrics(registry), content_type=CONTENT_TYPE)

    return app
