"""Claims as the provider sees them: generate (idempotent), look up, list, cancel."""

from __future__ import annotations

import uuid as uuidlib
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from server import lifecycle, metrics, validation
from server.audit import AuditLog
from server.batching import Batcher
from server.crypto import key_id
from server.errors import ApiError, invalid, not_found
from server.models import ADMIN, Caller, Claim, ClaimStatus, PageRequest, Provider, utcnow
from server.providers import suspended
from server.settings import Settings
from server.store import Duplicate, Store
from server.transitions import Transitions


@dataclass(frozen=True)
class Generated:
    claim: Claim
    created: bool  # False when an earlier identical request already made it


class ClaimService:
    def __init__(
        self, settings: Settings, store: Store, transitions: Transitions, audit: AuditLog
    ) -> None:
        self.settings = settings
        self.store = store
        self.transitions = transitions
        self.audit = audit
        self._batches: Batcher[Claim, Generated] = Batcher(
            "generate", self._write, max_batch=settings.db_batch, observe=metrics.observe_batch
        )

    def claim_url(self, claim: Claim) -> str:
        return f"{self.settings.public_base()}/cashout/claim/{claim.provider}/{claim.uuid}"

    def _replay(self, existing: Claim, amount: int) -> Generated:
        if existing.amount != amount:
            raise ApiError(
                409,
                "id_conflict",
                f"A claim with this id already exists for a different amount ({existing.amount}).",
            )
        return Generated(existing, created=False)

    async def generate(self, provider: Provider, body: Any) -> Generated:
        if provider.suspended:  # issue 11: a suspended provider makes no new claims
            raise suspended()
        body = validation.check("generate", body)
        amount, ref = body["amount"], body["id"]
        ttl = body.get("expires_in", self.settings.claim_ttl)
        if ttl > self.settings.max_claim_ttl:
            raise invalid("expires_in", f"must be at most {self.settings.max_claim_ttl}")
        if amount > self.settings.max_claim_amount:
            raise ApiError(
                400,
                "amount_over_limit",
                f"The amount is over the per-claim maximum of {self.settings.max_claim_amount}.",
                [{"field": "amount", "problem": "is over the per-claim maximum"}],
            )
        now = utcnow()
        return await self._batches.submit(
            Claim(
                uuid=str(uuidlib.uuid4()),
                provider=provider.name,
                ref=ref,
                amount=amount,
                status=ClaimStatus.PENDING,
                created_at=now,
                expires_at=now + timedelta(seconds=ttl),
                day=now.strftime("%Y-%m-%d"),
            )
        )

    async def _write(self, claims: list[Claim]) -> list[Generated | BaseException]:
        """Create a batch of claims: one daily reservation per provider and day, then one
        unordered insert. No look-up first: the unique (provider, id) index decides, and a
        replay is found on the way out.

        The same (provider, id) twice in a batch is written once; the later copies replay
        it, as they would have one round trip later.
        """
        leaders: dict[tuple[str, str], int] = {}
        for i, claim in enumerate(claims):
            leaders.setdefault((claim.provider, claim.ref), i)
        lead = list(leaders.values())
        outcome: dict[int, Generated | BaseException] = {}

        granted: list[int] = []
        refused: set[int] = set()
        for day_group in _by_day(claims, lead).values():
            ok = await self._reserve(claims, day_group)
            granted += [i for i in day_group if i in ok]
            refused.update(i for i in day_group if i not in ok)

        written = await self.store.claims.insert_many([claims[i] for i in granted])
        duplicates = []
        for i, error in zip(granted, written, strict=True):
            if error is None:
                outcome[i] = Generated(claims[i], created=True)
            elif isinstance(error, Duplicate):
                duplicates.append(i)
            else:
                outcome[i] = error
        for (provider, day), day_group in _by_day(claims, duplicates).items():
            await self.store.totals.release(provider, day, sum(claims[i].amount for i in day_group))
        for i in [*refused, *duplicates]:
            outcome[i] = await self._existing(claims[i], over_limit=i in refused)

        again = []
        for i, claim in enumerate(claims):
            if i in outcome:
                continue
            first = outcome[leaders[(claim.provider, claim.ref)]]
            if isinstance(first, Generated):
                try:
                    outcome[i] = self._replay(first.claim, claim.amount)
                except ApiError as exc:
                    outcome[i] = exc
            else:  # the first copy was refused: this one must be tried on its own merits
                again.append(i)
        if again:
            for i, result in zip(again, await self._write([claims[i] for i in again]), strict=True):
                outcome[i] = result
        return [outcome[i] for i in range(len(claims))]

    async def _reserve(self, claims: list[Claim], group: list[int]) -> set[int]:
        """Which of one provider's claims for one day fit under the daily limit, as if they
        had come one by one in arrival order. Usually one update for the whole group."""
        first, limit = claims[group[0]], self.settings.daily_limit

        async def reserve(indexes: list[int]) -> bool:
            return await self.store.totals.reserve(
                first.provider, first.day, sum(claims[i].amount for i in indexes), limit
            )

        if await reserve(group):
            return set(group)
        if len(group) == 1:
            return set()
        # Near the limit: take claims in arrival order while they fit in what is left.
        room = limit - await self.store.totals.total(first.provider, first.day)
        fitting = []
        for i in group:
            if claims[i].amount <= room:
                fitting.append(i)
                room -= claims[i].amount
        if not fitting or await reserve(fitting):
            return set(fitting)
        # Another process moved the total meanwhile: one by one, still in arrival order.
        return {i for i in group if await reserve([i])}

    async def _existing(self, claim: Claim, *, over_limit: bool) -> Generated | Exception:
        """After a refusal: a concurrent identical request may have won meanwhile."""
        existing = await self.store.claims.by_ref(claim.provider, claim.ref)
        if existing is not None:
            try:
                return self._replay(existing, claim.amount)
            except ApiError as exc:
                return exc
        if not over_limit:  # pragma: no cover - the unique index said it exists
            return Duplicate(claim.ref)
        return ApiError(
            400,
            "amount_over_limit",
            f"The amount would take today's total over the daily limit of "
            f"{self.settings.daily_limit}.",
            [{"field": "amount", "problem": "is over today's remaining limit"}],
        )

    async def get(self, provider: Provider, uuid: str) -> Claim:
        claim = await self.store.claims.get(provider.name, uuid)
        if claim is None:
            raise not_found("No such claim.")
        return claim

    async def get_by_ref(self, provider: Provider, ref: str) -> Claim:
        claim = await self.store.claims.by_ref(provider.name, ref)
        if claim is None:
            raise not_found("No claim with this id.")
        return claim

    async def list(
        self, provider: Provider, *, status: str | None, limit: str | None, after: str | None
    ) -> tuple[list[Claim], str | None]:
        """One page of the provider's claims, newest first, and the cursor to the next."""
        request = validation.page_request(status, (s.value for s in ClaimStatus), limit, after)
        return await self.store.claims.page(provider.name, request)

    async def cancel(
        self, provider: Provider, uuid: str, body: Any, caller: Caller | None = None
    ) -> Claim:
        validation.check("empty", body)
        claim = await self._cancel(provider.name, uuid)
        if claim is not None:
            await self.audit.record(
                provider.name,
                caller or Caller(key_id(provider.key_hash)),
                "claim.cancelled",
                {"claim": claim.uuid, "id": claim.ref, "amount": claim.amount},
            )
            return claim
        current = await self.get(provider, uuid)
        raise ApiError(
            409,
            "not_cancellable",
            f"Only a pending claim can be cancelled; this one is {current.status}.",
        )

    async def _cancel(self, provider: str, uuid: str) -> Claim | None:
        """Cancel a pending claim and give its amount back to the day's total."""
        claim = await self.transitions.apply(lifecycle.cancelling(provider, uuid, utcnow()))
        if claim is not None:
            await self.store.totals.release(provider, claim.day, claim.amount)
        return claim

    async def cancel_pending(self, provider: str, caller: Caller = ADMIN) -> int:
        """Cancel every pending claim of a provider (``admin cancel-pending``); how many."""
        cancelled, after = 0, None
        while True:
            request = PageRequest(str(ClaimStatus.PENDING), 100, after)
            page, _ = await self.store.claims.page(provider, request)
            for claim in page:
                if await self._cancel(provider, claim.uuid) is not None:
                    cancelled += 1
            if len(page) < 100:
                break
            after = (page[-1].created_at, page[-1].uuid)
        await self.audit.record(provider, caller, "claims.cancelled_pending", {"count": cancelled})
        return cancelled


def _by_day(claims: list[Claim], indexes: list[int]) -> dict[tuple[str, str], list[int]]:
    groups: dict[tuple[str, str], list[int]] = {}
    for i in indexes:
        groups.setdefault((claims[i].provider, claims[i].day), []).append(i)
    return groups
