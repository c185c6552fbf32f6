"""The web application: collects each handler module's routes and hands every handler the
services. The only module of ``server`` that imports handlers (the top of the layers)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import tornado.locale
import tornado.web

from handlers import claim_pages, ops, provider_api, webhooks_api
from handlers.base import NotFoundHandler, Route, SecureStaticFileHandler
from server.logs import log_request
from server.services import Services

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
HANDLER_MODULES = (provider_api, claim_pages, webhooks_api, ops)


def routes(operations: bool = True) -> list[Route]:
    """Every route of the service, as the handler modules declare them; without the
    operations endpoints (``ops.OPERATIONS``) when they are served on a port of their own."""
    found = [route for module in HANDLER_MODULES for route in module.default_handlers]
    if not operations:
        found = [r for r in found if r[0] not in ops.OPERATIONS]
    return found


def _pattern(template: str) -> str:
    """``/a/{name}`` -> ``/a/(?P<name>[^/]+)$``: routes read like the API reference."""
    return re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", template) + "$"


def make_app(
    services: Services, *, only: list[Route] | None = None, **extra: Any
) -> tornado.web.Application:
    """The public application; ``only``: an application with just these routes (the
    operations port's). With ``CASHOUT_OPS_PORT`` set the public one leaves them out."""
    if only is None:
        only = routes(operations=services.settings.ops_port is None)
    handlers = [tornado.web.url(_pattern(t), h, {"route": t}) for t, h in only]
    tornado.locale.load_translations(str(TEMPLATES / "locale"))
    tornado.locale.set_default_locale("en_US")
    production = services.settings.production
    return tornado.web.Application(
        handlers,
        services=services,
        production=production,
        template_path=str(TEMPLATES),
        static_path=str(TEMPLATES / "static"),
        static_handler_class=SecureStaticFileHandler,
        xsrf_cookies=True,
        xsrf_cookie_kwargs={"httponly": True, "samesite": "Strict", "secure": production},
        default_handler_class=NotFoundHandler,
        default_handler_args={"route": "(unknown)"},
        log_function=log_request,
        compress_response=False,
        **extra,
    )


def make_ops_app(services: Services) -> tornado.web.Application:
    """The operations port: ``/metrics``, ``/healthz``, ``/readyz`` and nothing else."""
    return make_app(services, only=[r for r in routes() if r[0] in ops.OPERATIONS])
