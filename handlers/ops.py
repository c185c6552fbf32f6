"""Endpoints for the operator and load balancers: no authentication, nothing secret."""

from __future__ import annotations

import os

from handlers.base import BaseHandler
from server import metrics
from server.models import utcnow
from server.validation import openapi_document


class HealthHandler(BaseHandler):
    def get(self) -> None:
        self.write_json({"status": "ok", "pid": os.getpid()})


class ReadyHandler(BaseHandler):
    async def get(self) -> None:
        db = await self.services.store.ping()
        alive = await self.services.gateway.is_alive()
        ready = db and alive is not False
        self.write_json(
            {"status": "ok" if ready else "unavailable", "database": db, "gateway": alive},
            status=200 if ready else 503,
        )


class MetricsHandler(BaseHandler):
    """Prometheus text format; no authentication, so nothing secret and no provider names."""

    async def get(self) -> None:
        figures = await self.services.store.figures(utcnow())
        self.set_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.finish(metrics.render(figures))


class OpenApiHandler(BaseHandler):
    """``schemas/openapi.yaml`` as JSON, with the request schemas inlined from their files."""

    def get(self) -> None:
        self.write_json(openapi_document())
