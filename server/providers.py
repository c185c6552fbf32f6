"""Provider accounts: registration, authentication, profile changes and credential rotation."""

from __future__ import annotations

import secrets as pysecrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from gateways.base import Card, Gateway, mask_pan
from server import metrics, notices, validation
from server.audit import AuditLog
from server.batching import Batcher
from server.card_checks import CardChecks
from server.crypto import (
    KeyRing,
    aad,
    hash_api_key,
    key_id,
    new_api_key,
    new_webhook_secret,
    same_hash,
)
from server.errors import ApiError, not_found
from server.invites import Invites
from server.models import ADMIN, Caller, OwedEvent, Provider, SealedCard, WebhookSecret, utcnow
from server.settings import Settings
from server.store import Duplicate, Store

SECRET_OVERLAP = timedelta(hours=24)


@dataclass(frozen=True)
class Credentials:
    """Shown to the provider once; we keep only a hash of the key and a sealed secret."""

    api_key: str | None = None
    webhook_secret: str | None = None


class ProviderService:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        keys: KeyRing,
        gateway: Gateway,
        *,
        checks: CardChecks,
        invites: Invites,
        audit: AuditLog,
    ):
        self.settings = settings
        self.store = store
        self.keys = keys
        self.gateway = gateway
        self.checks = checks
        self.invites = invites
        self.audit = audit
        # Hands security notices to the webhook outbox (``WebhookSender.write_owed``, wired
        # by ``Services``: the sender itself depends on this service).
        self.notify: Callable[[str, Sequence[OwedEvent]], Awaitable[None]] | None = None
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

    def open_pan(self, provider: Provider) -> str:
        """Only the paying card's number (to name it for the card limits)."""
        return self.keys.open(provider.card.pan, aad("providers", provider.name, "card.pan"))

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

    # -- operations ------------------------------------------------------------------------

    async def register(self, body: Any, caller: Caller) -> Credentials:
        """Checks first (the invite, then the body, then the name, then the card at the
        switch); the invite is used only once everything else has passed."""
        body = validation.check("register", body)
        invite = await self.invites.check(body.get("invite"))
        validation.check_card(body)
        endpoint = validation.check_endpoint(body["endpoint"], self.settings.production)
        name = body["name"]
        if await self.store.providers.get(name) is not None:
            raise _exists(name)
        await self.checks.verify(_card(body), caller)
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
        if invite is not None:
            await self.invites.take(invite, name)
        try:
            await self.store.providers.insert(provider)
        except BaseException as exc:
            if invite is not None:  # a failed registration does not use up the code
                await self.invites.give_back(invite, name)
            if isinstance(exc, Duplicate):
                raise _exists(name) from None
            raise
        await self.audit.record(
            name,
            Caller(key_id(provider.key_hash), caller.address),
            "provider.registered",
            {
                "card": mask_pan(body["pan"]),
                "endpoint": endpoint,
                "key_id": key_id(provider.key_hash),
                "registration": self.settings.registration_mode,
                "invite": invite.invite_id if invite else None,
            },
        )
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

    async def accepting_claims(self, name: str) -> Provider | None:
        """The provider behind a claim link (None if there is none), or 403 while it is
        suspended: its claim links and the JSON claim route pay nothing until resumed."""
        provider = await self.by_name(name)
        if provider is not None and provider.suspended:
            raise suspended()
        return provider

    async def update_profile(self, provider: Provider, body: Any, caller: Caller) -> Provider:
        _active(provider)
        body = validation.check("profile", body)
        endpoint = None
        card = None
        changes: list[dict[str, Any]] = []
        if "endpoint" in body:
            endpoint = validation.check_endpoint(body["endpoint"], self.settings.production)
            if endpoint != provider.endpoint:
                changes.append({"field": "endpoint", "old": provider.endpoint, "new": endpoint})
        if "pan" in body:
            validation.check_card(body)
            await self.checks.verify(_card(body), caller, provider.name)
            card = self._seal_card(provider.name, body["pan"], body["expDate"], body["ipin"])
            changes.append(
                {"field": "card", "old": mask_pan(provider.card.last4), "new": mask_pan(card.last4)}
            )
        texts = {f: _text(body[f]) for f in ("display_name", "support") if f in body}
        owed = (
            notices.provider_updated(provider.name, changes, caller, _listening(provider), endpoint)
            if changes
            else []
        )
        updated = await self.store.providers.update(
            provider.name,
            updated_at=utcnow(),
            endpoint=endpoint,
            card=card,
            texts=texts,
            expect=provider,
            active=True,
            owed=owed,
        )
        if updated is None:
            raise await self._conflict(provider.name)
        if endpoint is not None:  # re-enabled: what was held (or waiting) is sent now
            await self.store.events.release_held(provider.name, utcnow())
        shown = [
            {"field": f, "old": getattr(provider, f), "new": v}
            for f, v in texts.items()
            if getattr(provider, f) != v
        ]
        await self._changed(updated, caller, "profile.updated", changes + shown, owed)
        return updated

    async def rotate(
        self, provider: Provider, body: Any, caller: Caller
    ) -> tuple[Credentials, Provider]:
        _active(provider)
        body = validation.check("rotate_keys", body)
        if not (body.get("api_key") or body.get("webhook_secret")):
            raise ApiError(
                400,
                "invalid_request",
                'Name what to rotate: {"api_key": true} and/or {"webhook_secret": true}.',
                [{"field": "(body)", "problem": "must set api_key or webhook_secret"}],
            )
        return await self._replace_credentials(
            provider,
            caller,
            api_key=bool(body.get("api_key")),
            webhook_secret=bool(body.get("webhook_secret")),
            active=True,
        )

    async def _replace_credentials(
        self,
        provider: Provider,
        caller: Caller,
        *,
        api_key: bool,
        webhook_secret: bool,
        active: bool,
        overlap: bool = True,
    ) -> tuple[Credentials, Provider]:
        """New key and/or secret, compare-and-set on the ones read: of two concurrent
        rotations one wins and the other gets 409, so every secret answered signs."""
        now = utcnow()
        new_key = secret = None
        key_hash = secrets = None
        changes: list[dict[str, Any]] = []
        if api_key:
            new_key = new_api_key(self.settings.key_prefix)
            key_hash = hash_api_key(new_key)
            changes.append(
                {
                    "field": "api_key",
                    "key_id": key_id(key_hash),
                    "previous_key_id": key_id(provider.key_hash),
                }
            )
        if webhook_secret:
            secret, fresh = self._new_secret(provider.name)
            # The old secrets keep signing for a day so receivers can switch without a gap
            # (unless the operator replaces them outright: ``overlap=False``).
            kept = tuple(
                WebhookSecret(
                    s.secret_id, s.secret, s.created_at, s.expires_at or now + SECRET_OVERLAP
                )
                for s in provider.secrets
                if overlap and (s.expires_at is None or s.expires_at > now)
            )
            secrets = (fresh, *kept)
            changes.append({"field": "webhook_secret", "secret_id": fresh.secret_id})
        owed = notices.provider_updated(provider.name, changes, caller, _listening(provider))
        updated = await self.store.providers.update(
            provider.name,
            updated_at=now,
            key_hash=key_hash,
            secrets=secrets,
            expect=provider,
            active=active,
            owed=owed,
        )
        if updated is None:
            raise await self._conflict(provider.name)
        await self._changed(updated, caller, "credentials.rotated", changes, owed)
        return Credentials(api_key=new_key, webhook_secret=secret), updated

    # -- the operator's controls (``python -m server admin ...``) --------------------------

    async def get_existing(self, name: str) -> Provider:
        provider = await self.store.providers.get(name)
        if provider is None:
            raise not_found(f"No provider named {name!r}.")
        return provider

    async def suspend(self, name: str, reason: str, caller: Caller = ADMIN) -> Provider | None:
        """Stop new claims and payouts (None: it already was suspended)."""
        provider = await self.get_existing(name)
        change = {"field": "status", "old": "active", "new": "suspended", "reason": reason}
        owed = notices.provider_updated(name, [change], caller, _listening(provider))
        updated = await self.store.providers.update(
            name, updated_at=utcnow(), suspend=(utcnow(), reason), owed=owed
        )
        if updated is None:
            return None
        await self._changed(updated, caller, "provider.suspended", [change], owed)
        return updated

    async def resume(self, name: str, caller: Caller = ADMIN) -> Provider | None:
        """Undo ``suspend`` (None: it was not suspended)."""
        provider = await self.get_existing(name)
        change = {"field": "status", "old": "suspended", "new": "active"}
        owed = notices.provider_updated(name, [change], caller, _listening(provider))
        updated = await self.store.providers.update(
            name, updated_at=utcnow(), resume=True, owed=owed
        )
        if updated is None:
            return None
        await self._changed(updated, caller, "provider.resumed", [change], owed)
        return updated

    async def revoke_key(
        self, name: str, *, webhook_secret: bool = False, caller: Caller = ADMIN
    ) -> tuple[Credentials, Provider]:
        """A new API key at once (the old one, and whoever holds it, is locked out); with
        ``webhook_secret`` also a new secret, every older one dropped without overlap."""
        for _ in range(5):
            provider = await self.get_existing(name)
            try:
                return await self._replace_credentials(
                    provider,
                    caller,
                    api_key=True,
                    webhook_secret=webhook_secret,
                    active=False,
                    overlap=False,
                )
            except ApiError as exc:
                if exc.code != "conflict":
                    raise
        raise ApiError(409, "conflict", "The provider keeps changing; try again.")

    # -- after a change --------------------------------------------------------------------

    async def _changed(
        self,
        provider: Provider,
        caller: Caller,
        action: str,
        changes: list[dict[str, Any]],
        owed: list[OwedEvent],
    ) -> None:
        """Record a change in the audit log and hand its notices to the outbox."""
        if not changes:
            return
        await self.audit.record(provider.name, caller, action, {"changes": changes})
        if owed and self.notify is not None:
            await self.notify(provider.name, owed)

    async def _conflict(self, name: str) -> ApiError:
        """Why a compare-and-set on a provider did not apply."""
        current = await self.store.providers.get(name)
        if current is None:
            return not_found("No such provider.")
        if current.suspended:
            return suspended()
        return ApiError(
            409,
            "conflict",
            "The provider was changed by another request meanwhile; read it again and retry.",
        )


def _card(body: Mapping[str, Any]) -> Card:
    return Card(body["pan"], body["expDate"], body["ipin"])


def suspended() -> ApiError:
    return ApiError(
        403,
        "provider_suspended",
        "This provider is suspended: no claims can be generated or paid until it is resumed.",
    )


def _active(provider: Provider) -> None:
    if provider.suspended:
        raise suspended()


def _text(value: str | None) -> str | None:
    """A display name or support contact as shown: trimmed; ``None`` (or blank) for none."""
    if value is None:
        return None
    return value.strip() or None


def _exists(name: str) -> ApiError:
    return ApiError(409, "provider_exists", f"A provider named {name!r} already exists.")


def _listening(provider: Provider) -> str | None:
    """The endpoint a security notice about a change goes to: the one in force before it,
    unless it was disabled (it answered 410 Gone, or failed for days)."""
    return provider.endpoint if provider.endpoint_enabled else None
