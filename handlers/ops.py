"""Endpoints for the operator and load balancers: no authentication, nothing secret."""

from __future__ import annotations

import os

from handlers.base import ApiHandler, Route
from server import metrics
from server.validation import openapi_document


class HealthHandler(ApiHandler):
    def get(self) -> None:
        self.write_json({"status": "ok", "pid": os.getpid()})


class ReadyHandler(ApiHandler):
    async def get(self) -> None:
        r = await self.services.health.readiness()
        self.write_json(
            {
                "status": "ok" if r.ready else "unavailable",
                "database": r.database,
                "gateway": r.gateway,
            },
            status=200 if r.ready else 503,
        )


class MetricsHandler(ApiHandler):
    """Prometheus text format; no authentication, so nothing secret and no provider names."""

    async def get(self) -> None:
        figures = await self.services.health.figures()
        self.set_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.finish(metrics.render(figures))


class OpenApiHandler(ApiHandler):
    """``schemas/openapi.yaml`` as JSON, with the request schemas inlined from their files."""

    def get(self) -> None:
        self.write_json(openapi_document())


# Served on CASHOUT_OPS_PORT when it is set (and then not on the public port); the OpenAPI
# document is for providers and stays public.
OPERATIONS = frozenset({"/healthz", "/readyz", "/metrics"})

default_handlers: list[Route] = [
    ("/healthz", HealthHandler),
    ("/readyz", ReadyHandler),
    ("/metrics", MetricsHandler),
    ("/openapi.json", OpenApiHandler),
]
