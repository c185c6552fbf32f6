"""The Tornado application: routes and the services every handler reaches."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tornado.locale
import tornado.web

from gateways.base import Gateway, GatewayConfig
from gateways.instrumented import InstrumentedGateway
from handlers import claim_pages, ops, provider_api, webhooks_api
from handlers.base import NotFoundHandler
from server import metrics
from server.background import InFlight
from server.claims import ClaimService
from server.crypto import KeyRing
from server.http_client import TornadoHttpClient
from server.logs import log_request
from server.payouts import PayoutEngine
from server.providers import ProviderService
from server.settings import Settings
from server.store import Store
from server.webhooks import WebhookSender

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"

ROUTES: tuple[tuple[str, type[tornado.web.RequestHandler]], ...] = (
    ("/cashout/register", provider_api.RegisterHandler),
    ("/cashout/generate/{name}", provider_api.GenerateHandler),
    ("/cashout/claims/{name}/{uuid}/cancel", provider_api.CancelHandler),
    ("/cashout/claims/{name}/{uuid}", provider_api.ClaimHandler),
    ("/cashout/claims/{name}", provider_api.ClaimsHandler),
    ("/cashout/profile/{name}", provider_api.ProfileHandler),
    ("/cashout/keys/{name}/rotate", provider_api.RotateKeysHandler),
    ("/cashout/claim/{name}/{uuid}", claim_pages.ClaimPageHandler),
    ("/cashout/claim/{name}", claim_pages.ClaimApiHandler),
    ("/cashout/webhooks/{name}/test", webhooks_api.TestWebhookHandler),
    ("/cashout/webhooks/{name}/{event_id}/redeliver", webhooks_api.RedeliverHandler),
    ("/cashout/webhooks/{name}", webhooks_api.WebhooksHandler),
    ("/healthz", ops.HealthHandler),
    ("/readyz", ops.ReadyHandler),
    ("/metrics", ops.MetricsHandler),
    ("/openapi.json", ops.OpenApiHandler),
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
    payouts: PayoutEngine
    webhooks: WebhookSender
    inflight: InFlight = field(default_factory=InFlight)

    @classmethod
    def build(cls, settings: Settings, store: Store, keys: KeyRing, gateway: Gateway) -> Services:
        gateway = InstrumentedGateway(gateway, metrics.observe_payment)
        providers = ProviderService(settings, store, keys, gateway)
        payouts = PayoutEngine(settings, store, keys, gateway, providers)
        webhooks = WebhookSender(settings, store, providers)
        payouts.on_terminal.append(webhooks.claim_finished)
        return cls(
            settings,
            store,
            keys,
            gateway,
            providers,
            ClaimService(settings, store),
            payouts,
            webhooks,
        )


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
        http=TornadoHttpClient(),
    )


def _pattern(template: str) -> str:
    """``/a/{name}`` -> ``/a/(?P<name>[^/]+)$``: routes read like the API reference."""
    return re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", template) + "$"


def make_app(services: Services, **extra: Any) -> tornado.web.Application:
    handlers = [tornado.web.url(_pattern(t), h, {"route": t}) for t, h in ROUTES]
    tornado.locale.load_translations(str(TEMPLATES / "locale"))
    tornado.locale.set_default_locale("en_US")
    production = services.settings.production
    return tornado.web.Application(
        handlers,
        services=services,
        production=production,
        template_path=str(TEMPLATES),
        static_path=str(TEMPLATES / "static"),
        static_handler_class=claim_pages.SecureStaticFileHandler,
        xsrf_cookies=True,
        xsrf_cookie_kwargs={"httponly": True, "samesite": "Strict", "secure": production},
        default_handler_class=NotFoundHandler,
        default_handler_args={"route": "(unknown)"},
        log_function=log_request,
        compress_response=False,
        **extra,
    )
