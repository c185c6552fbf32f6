"""The services every handler and admin task reaches, wired once at start-up.

This module imports no handler: the web layer (``server.app``) depends on it, never the
other way round.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateways.base import Gateway, GatewayHost, create_gateway
from gateways.instrumented import InstrumentedGateway
from server import metrics
from server.audit import AuditLog
from server.background import InFlight
from server.card_checks import CardChecks
from server.card_limits import CardLimits
from server.claims import ClaimService
from server.crypto import CardNamer, KeyRing, load_or_create_key_file
from server.customer import CustomerService
from server.health import Health
from server.http_client import TornadoHttpClient
from server.invites import Invites
from server.payouts import PayoutEngine
from server.providers import ProviderService
from server.ratelimit import RateLimits
from server.settings import Settings
from server.store import Store
from server.transitions import Transitions
from server.webhooks import WebhookSender


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
    health: Health
    customers: CustomerService  # what the customer's claim page shows and asks
    audit: AuditLog
    invites: Invites
    inflight: InFlight = field(default_factory=InFlight)
    limits: RateLimits = field(init=False)  # per process, from the settings

    def __post_init__(self) -> None:
        self.limits = RateLimits(self.settings)

    @classmethod
    def build(cls, settings: Settings, store: Store, keys: KeyRing, gateway: Gateway) -> Services:
        gateway = InstrumentedGateway(gateway, metrics.observe_payment)
        transitions = Transitions(store, settings.db_batch)
        audit = AuditLog(store)
        namer = CardNamer.for_settings(settings.card_key, keys)
        invites = Invites(settings, store, audit)
        checks = CardChecks(settings, store, gateway, namer, audit)
        providers = ProviderService(
            settings, store, keys, gateway, checks=checks, invites=invites, audit=audit
        )
        limits = CardLimits(settings, store, providers, namer)
        transitions.on_applied.append(limits.settled)
        payouts = PayoutEngine(settings, store, keys, gateway, providers, transitions, limits)
        webhooks = WebhookSender(settings, store, providers)
        transitions.on_terminal.append(webhooks.claim_finished)
        providers.notify = webhooks.write_owed
        claims = ClaimService(settings, store, transitions, audit)
        return cls(
            settings,
            store,
            keys,
            gateway,
            providers,
            claims,
            payouts,
            webhooks,
            Health(store, gateway),
            CustomerService(store, keys, payouts),
            audit,
            invites,
        )

    @classmethod
    async def open(cls, settings: Settings, uri: str) -> Services:
        """Keys, database (indexes made) and gateway, for a server or an admin task."""
        store = Store(uri, settings.db_name, settings.db_timeout_ms)
        try:
            keys = load_keys(settings)
            await store.create_indexes()
            gateway = open_gateway(settings)
        except BaseException:
            await store.close()
            raise
        return cls.build(settings, store, keys, gateway)

    async def close(self) -> None:
        await self.gateway.close()
        await self.store.close()


def load_keys(settings: Settings) -> KeyRing:
    if settings.keys:
        return KeyRing.parse(settings.keys)
    return load_or_create_key_file(settings.data_dir)


def open_gateway(settings: Settings) -> Gateway:
    """The selected gateway with its own options and the host's HTTP client."""
    host = GatewayHost(settings.env, settings.data_dir, TornadoHttpClient())
    return create_gateway(settings.gateway, settings.gateway_options, host)
