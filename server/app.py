"""The Tornado application: routes and the services every handler reaches."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import tornado.web

from gateways.base import Gateway, GatewayConfig
from handlers import ops, provider_api
from handlers.base import NotFoundHandler
from server.claims import ClaimService
from server.crypto import KeyRing
from server.logs import log_request
from server.providers import ProviderService
from server.settings import Settings
from server.store import Store

ROUTES: tuple[tuple[str, type[tornado.web.RequestHandler]], ...] = (
    ("/cashout/register", provider_api.RegisterHandler),
    ("/cashout/generate/{name}", provider_api.GenerateHandler),
    ("/cashout/claims/{name}/{uuid}/cancel", provider_api.CancelHandler),
    ("/cashout/claims/{name}/{uuid}", provider_api.ClaimHandler),
    ("/cashout/claims/{name}", provider_api.ClaimsHandler),
    ("/cashout/profile/{name}", provider_api.ProfileHandler),
    ("/cashout/keys/{name}/rotate", provider_api.RotateKeysHandler),
    ("/healthz", ops.HealthHandler),
    ("/readyz", ops.ReadyHandler),
)


@dataclass
class Services:
    """Everything a handler may call, built once at start-up."""

    settings: Settings
    store: Store
    keys: KeyRing
    gateway: Gateway
    providers: ProviderService
    claims: ClaimService

    @classmethod
    def build(cls, settings: Settings, store: Store, keys: KeyRing, gateway: Gateway
              ) -> Services:
        return cls(settings, store, keys, gateway,
                   ProviderService(settings, store, keys, gateway),
                   ClaimService(settings, store))


def gateway_config(settings: Settings) -> GatewayConfig:
    return GatewayConfig(
        environment=settings.env,
        data_dir=settings.data_dir,
        mock_latency_ms=settings.mock_latency_ms,
        ebs_url=settings.ebs_url,
        ebs_application_id=settings.ebs_application_id,
        ebs_public_key=settings.ebs_public_key,
        ebs_ca_file=settings.ebs_ca_file,
        ebs_connect_timeout=settings.ebs_connect_timeout,
        ebs_request_timeout=settings.ebs_request_timeout,
        ebs_datetime_format=settings.ebs_datetime_format,
        ebs_timezone=settings.ebs_timezone,
    )


def _pattern(template: str) -> str:
    """``/a/{name}`` -> ``/a/(?P<name>[^/]+)$``: routes read like the API reference."""
    return re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", template) + "$"


def make_app(services: Services, **extra: Any) -> tornado.web.Application:
    handlers = [tornado.web.url(_pattern(t), h, {"route": t}) for t, h in ROUTES]
    return tornado.web.Application(
        handlers,
        services=services,
        production=services.settings.production,
        default_handler_class=NotFoundHandler,
        default_handler_args={"route": "(unknown)"},
        log_function=log_request,
        compress_response=False,
        **extra,
    )
