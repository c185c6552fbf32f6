"""Provider accounts: registration, authentication, profile changes and credential rotation."""

from __future__ import annotations

import secrets as pysecrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from gateways.base import Card, Gateway
from server import metrics, validation
from server.batching import Batcher
from server.crypto import KeyRing, aad, hash_api_key, new_api_key, new_webhook_secret, same_hash
from server.errors import ApiError, not_found
from server.logs import mask
from server.models import Provider, SealedCard, WebhookSecret, utcnow
from server.settings import Settings
from server.store import Duplicate, Store

SECRET_OVERLAP = timedelta(hours=24)


@dataclass(frozen=True)
class Credentials:
    """Shown to the provider once; we keep only a hash of the key and a sealed secret."""

    api_key: str | None = None
    webhook_secret: str | None = None


class ProviderService:
    def __init__(self, settings: Settings, store: Store, keys: KeyRing, gateway: Gateway):
        self.settings = settings
        self.store = store
        self.keys = keys
        self.gateway = gateway
        self._lookups: Batcher[str, Provider | None] = Batcher(
            "authenticate",
            self._find_keys,
            max_batch=settings.db_batch,
            observe=metrics.observe_batch,
        )
        self._by_name: Batcher[str, Provider | None] = Batcher(
            "providers",
            self._find_names,
            max_batch=settings.db_batch,
            observe=metrics.observe_batch,
        )

    # -- sealing ---------------------------------------------------------------------------

    def _seal_card(self, name: str, pan: str, exp_date: str, ipin: str) -> SealedCard:
        return SealedCard(
            pan=self.keys.seal(pan, aad("providers", name, "card.pan")),
            exp_date=self.keys.seal(exp_date, aad("providers", name, "card.exp")),
            ipin=self.keys.seal(ipin, aad("providers", name, "card.ipin")),
            last4=pan[-4:],
        )

    def _new_secret(self, name: str) -> tuple[str, WebhookSecret]:
        sid = "s" + pysecrets.token_hex(6)
        secret = new_webhook_secret()
        sealed = self.keys.seal(secret, aad("providers", name, f"secrets.{sid}"))
        return secret, WebhookSecret(sid, sealed, utcnow())

    def open_card(self, provider: Provider) -> Card:
        """The paying card in clear, for the gateway only."""
        name, card = provider.name, provider.card
        return Card(
            pan=self.keys.open(card.pan, aad("providers", name, "card.pan")),
            exp_date=self.keys.open(card.exp_date, aad("providers", name, "card.exp")),
            ipin=self.keys.open(card.ipin, aad("providers", name, "card.ipin")),
        )

    def open_secrets(self, provider: Provider) -> list[str]:
        """Every webhook secret still allowed to sign, newest first."""
        now = utcnow()
        return [
            self.keys.open(s.secret, aad("providers", provider.name, f"secrets.{s.secret_id}"))
            for s in provider.secrets
            if s.expires_at is None or s.expires_at > now
        ]

    async def _verify(self, body: Mapping[str, Any]) -> None:
        """Refuse a card the switch says is bad rather than store it."""
        result = await self.gateway.verify_card(Card(body["pan"], body["expDate"], body["ipin"]))
        if result is not None and not result.ok and result.code is None:
            # No answer from the switch says nothing about the card: try again later.
            raise ApiError(
                503,
                "unavailable",
                "The payment switch could not check the card; try again shortly.",
            )
        if result is not None and not result.ok:
            reason = mask(result.message) or "the card was not accepted"
            raise ApiError(
                400,
                "card_rejected",
                f"The card was rejected: {reason}",
                [{"field": "pan", "problem": "was rejected by the payment switch"}],
            )

    # -- operations ------------------------------------------------------------------------

    async def register(self, body: Any) -> Credentials:
        body = validation.check("register", body)
        validation.check_card(body)
        endpoint = validation.check_endpoint(body["endpoint"], self.settings.production)
        name = body["name"]
        if await self.store.providers.get(name) is not None:
            raise _exists(name)
        await self._verify(body)
        api_key = new_api_key(self.settings.key_prefix)
        secret, sealed_secret = self._new_secret(name)
        now = utcnow()
        provider = Provider(
            name=name,
            key_hash=hash_api_key(api_key),
            card=self._seal_card(name, body["pan"], body["expDate"], body["ipin"]),
            endpoint=endpoint,
            secrets=(sealed_secret,),
            created_at=now,
            updated_at=now,
            display_name=_text(body.get("display_name")),
            support=_text(body.get("support")),
        )
        try:
            await self.store.providers.insert(provider)
        except Duplicate:
            raise _exists(name) from None
        return Credentials(api_key=api_key, webhook_secret=secret)

    async def authenticate(self, authorization: str | None, name: str) -> Provider:
        """The provider owning both the path and the key: 401 for a bad key, 404 for a key
        that belongs to someone else (never reveal whether ``name`` exists)."""
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or len(token) > 256:
            raise ApiError(
                401, "unauthorized", "Send your API key as 'Authorization: Bearer <api_key>'."
            )
        key_hash = hash_api_key(token)
        provider = await self._lookups.submit(key_hash)
        if provider is None or not same_hash(provider.key_hash, key_hash):
            raise ApiError(401, "unauthorized", "The API key is not valid.")
        if provider.name != name:
            raise not_found("No such provider.")
        return provider

    async def by_name(self, name: str) -> Provider | None:
        """The provider as stored now (group commit: the pay path and the webhook sender read
        a provider per transfer and per delivery)."""
        return await self._by_name.submit(name)

    async def _find_names(self, names: list[str]) -> list[Provider | None]:
        found = await self.store.providers.by_names(names)
        return [found.get(n) for n in names]

    async def _find_keys(self, key_hashes: list[str]) -> list[Provider | None]:
        found = await self.store.providers.by_key_hashes(key_hashes)
        return [found.get(h) for h in key_hashes]

    async def update_profile(self, provider: Provider, body: Any) -> Provider:
        body = validation.check("profile", body)
        endpoint = None
        card = None
        if "endpoint" in body:
            endpoint = validation.check_endpoint(body["endpoint"], self.settings.production)
        if "pan" in body:
            validation.check_card(body)
            await self._verify(body)
            card = self._seal_card(provider.name, body["pan"], body["expDate"], body["ipin"])
        texts = {f: _text(body[f]) for f in ("display_name", "support") if f in body}
        updated = await self.store.providers.update(
            provider.name, updated_at=utcnow(), endpoint=endpoint, card=card, texts=texts
        )
        if updated is None:
            raise not_found("No such provider.")
        if endpoint is not None:  # re-enabled: what was held (or waiting) is sent now
            await self.store.events.release_held(provider.name, utcnow())
        return updated

    async def rotate(self, provider: Provider, body: Any) -> tuple[Credentials, Provider]:
        body = validation.check("rotate_keys", body)
        if not (body.get("api_key") or body.get("webhook_secret")):
            raise ApiError(
                400,
                "invalid_request",
                'Name what to rotate: {"api_key": true} and/or {"webhook_secret": true}.',
                [{"field": "(body)", "problem": "must set api_key or webhook_secret"}],
            )
        now = utcnow()
        api_key = secret = None
        key_hash = secrets = None
        if body.get("api_key"):
            api_key = new_api_key(self.settings.key_prefix)
            key_hash = hash_api_key(api_key)
        if body.get("webhook_secret"):
            secret, fresh = self._new_secret(provider.name)
            # The old secrets keep signing for a day so receivers can switch without a gap.
            kept = tuple(
                WebhookSecret(
                    s.secret_id, s.secret, s.created_at, s.expires_at or now + SECRET_OVERLAP
                )
                for s in provider.secrets
                if s.expires_at is None or s.expires_at > now
            )
            secrets = (fresh, *kept)
        updated = await self.store.providers.update(
            provider.name, updated_at=now, key_hash=key_hash, secrets=secrets
        )
        if updated is None:
            raise not_found("No such provider.")
        return Credentials(api_key=api_key, webhook_secret=secret), updated


def _text(value: str | None) -> str | None:
    """A display name or support contact as shown: trimmed; ``None`` (or blank) for none."""
    if value is None:
        return None
    return value.strip() or None


def _exists(name: str) -> ApiError:
    return ApiError(409, "provider_exists", f"A provider named {name!r} already exists.")
