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


def routes() -> list[Route]:
    """Every route of the service, as the handler modules declare them."""
    return [route for module in HANDLER_MODULES for route in module.default_handlers]


def _pattern(template: str) -> str:
    """``/a/{name}`` -> ``/a/(?P<name>[^/]+)$``: routes read like the API reference."""
    return re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", template) + "$"


def make_app(services: Services, **extra: Any) -> tornado.web.Application:
    handlers = [tornado.web.url(_pattern(t), h, {"route": t}) for t, h in routes()]
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
