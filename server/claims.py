"""Claims as the provider sees them: generate (idempotent), look up, list, cancel."""

from __future__ import annotations

import uuid as uuidlib
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from server import validation
from server.errors import ApiError, invalid, not_found
from server.models import Claim, ClaimStatus, Provider, rfc3339, utcnow
from server.settings import Settings
from server.store import Duplicate, Page, Store


@dataclass(frozen=True)
class Generated:
    claim: Claim
    created: bool  # False when an earlier identical request already made it


class ClaimService:
    def __init__(self, settings: Settings, store: Store):
        self.settings = settings
        self.store = store

    def claim_url(self, claim: Claim) -> str:
        return f"{self.settings.public_base()}/cashout/claim/{claim.provider}/{claim.uuid}"

    def generated_body(self, claim: Claim) -> dict[str, Any]:
        """The generate answer; built only from fields that never change, so a replay of the
        same request gets the very same body."""
        return {
            "result": claim.uuid,
            "uuid": claim.uuid,
            "url": self.claim_url(claim),
            "expires_at": rfc3339(claim.expires_at),
            "id": claim.ref,
            "amount": claim.amount,
        }

    def _replay(self, existing: Claim, amount: int) -> Generated:
        if existing.amount != amount:
            raise ApiError(409, "id_conflict",
                           f"A claim with this id already exists for a different amount "
                           f"({existing.amount}).")
        return Generated(existing, created=False)

    async def generate(self, provider: Provider, body: Any) -> Generated:
        body = validation.check("generate", body)
        amount, ref = body["amount"], body["id"]
        ttl = body.get("expires_in", self.settings.claim_ttl)
        if ttl > self.settings.max_claim_ttl:
            raise invalid("expires_in", f"must be at most {self.settings.max_claim_ttl}")
        # No look-up first: the unique (provider, id) index decides, and a replay is found
        # on the way out. Two round trips for a new claim instead of three.
        if amount > self.settings.max_claim_amount:
            raise ApiError(400, "amount_over_limit",
                           f"The amount is over the per-claim maximum of "
                           f"{self.settings.max_claim_amount}.",
                           [{"field": "amount", "problem": "is over the per-claim maximum"}])
        now = utcnow()
        claim = Claim(
            uuid=str(uuidlib.uuid4()),
            provider=provider.name,
            ref=ref,
            amount=amount,
            status=ClaimStatus.PENDING,
            created_at=now,
            expires_at=now + timedelta(seconds=ttl),
            day=now.strftime("%Y-%m-%d"),
        )
        if not await self.store.reserve_daily(provider.name, claim.day, amount,
                                              self.settings.daily_limit):
            # A concurrent identical request may have won while we checked the limit.
            existing = await self.store.claim_by_ref(provider.name, ref)
            if existing is not None:
                return self._replay(existing, amount)
            raise ApiError(400, "amount_over_limit",
                           f"The amount would take today's total over the daily limit of "
                           f"{self.settings.daily_limit}.",
                           [{"field": "amount", "problem": "is over today's remaining limit"}])
        try:
            await self.store.insert_claim(claim)
        except Duplicate:
            await self.store.release_daily(provider.name, claim.day, amount)
            existing = await self.store.claim_by_ref(provider.name, ref)
            if existing is None:  # pragma: no cover - unique index said it exists
                raise
            return self._replay(existing, amount)
        return Generated(claim, created=True)

    async def get(self, provider: Provider, uuid: str) -> Claim:
        claim = await self.store.claim(provider.name, uuid)
        if claim is None:
            raise not_found("No such claim.")
        return claim

    async def get_by_ref(self, provider: Provider, ref: str) -> Claim:
        claim = await self.store.claim_by_ref(provider.name, ref)
        if claim is None:
            raise not_found("No claim with this id.")
        return claim

    async def list(self, provider: Provider, *, status: str | None, limit: str | None,
                   after: str | None) -> Page:
        request = validation.page_request(status, (s.value for s in ClaimStatus), limit, after)
        return await self.store.list_claims(provider.name, request)

    async def cancel(self, provider: Provider, uuid: str, body: Any) -> Claim:
        validation.check("empty", body)
        claim = await self.store.cancel_claim(provider.name, uuid, utcnow())
        if claim is not None:
            await self.store.release_daily(provider.name, claim.day, claim.amount)
            return claim
        current = await self.get(provider, uuid)
        raise ApiError(409, "not_cancellable",
                       f"Only a pending claim can be cancelled; this one is {current.status}.")
