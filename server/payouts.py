"""The payouts engine: moves each claim's money exactly once.

The rules that make it exactly once (docs/DESIGN.md section 6):
- claiming is one compare-and-set ``pending -> processing`` that also stores the attempt's
  fresh gateway UUID, so the UUID is durable before the gateway is ever called;
- an attempt is settled by a compare-and-set on that attempt still being open, so a late or
  duplicate answer changes nothing;
- an unclear answer keeps the claim in ``processing``; only the switch's own record of that
  UUID (``status``) settles it, and a new attempt is started only once the switch says the
  old one never happened;
- a lease on the claim keeps reconciliation away from an attempt a live process still runs.

What each answer means is ``lifecycle.decide``; every change goes through ``Transitions``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid as uuidlib
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from typing import Any

from gateways.base import Card, Gateway, Outcome, TransferRequest, TransferResult
from server import lifecycle, validation
from server.attempt_leases import LeaseKeeper
from server.background import Background
from server.card_limits import CardLimits
from server.crypto import DecryptionError, KeyRing, aad
from server.errors import ApiError, not_found
from server.logs import mask
from server.models import Attempt, AttemptOutcome, Claim, ClaimStatus, utcnow
from server.providers import ProviderService
from server.settings import Settings
from server.store import Store
from server.transitions import Transitions

log = logging.getLogger("cashout.payouts")

RECONCILE_BATCH = 100
RECONCILE_PARALLEL = 8


class PayoutEngine:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        keys: KeyRing,
        gateway: Gateway,
        providers: ProviderService,
        transitions: Transitions,
        limits: CardLimits,
    ) -> None:
        self.settings = settings
        self.store = store
        self.keys = keys
        self.gateway = gateway
        self.providers = providers
        self.transitions = transitions
        self.rules = lifecycle.LeaseRules(timedelta(seconds=settings.attempt_lease))
        self.leases = LeaseKeeper(store, self.rules)
        self.limits = limits  # issue 11: daily limits per card (server/card_limits.py)
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuidlib.uuid4().hex[:8]}"
        self.background = Background("payouts")

    # -- claiming --------------------------------------------------------------------------

    async def submit(self, provider: str, uuid: str, pan_text: Any) -> Claim:
        """Claim a pending claim for the card ``pan_text``; the transfer runs in the
        background. Raises ApiError for a bad card or a claim that cannot be claimed."""
        paying = await self.providers.accepting_claims(provider)  # issue 11: 403 if suspended
        pan = validation.normalise_pan(pan_text) if isinstance(pan_text, str) else None
        if pan is None:
            digits = "".join(ch for ch in str(pan_text) if ch.isdigit())
            problem = (
                "is not valid; check the digits"
                if len(digits) in (16, 19)
                else "must be 16 or 19 digits"
            )
            raise ApiError(
                400,
                "invalid_card",
                f"The card number {problem}.",
                [{"field": "pan", "problem": problem}],
            )
        now = utcnow()
        attempt = Attempt(tran_uuid=str(uuidlib.uuid4()), started_at=now, card_last4=pan[-4:])
        sealed = self.keys.seal(pan, aad("claims", uuid, "card.pan"))
        # issue 11: hold the amount against both cards' daily limits (422 when over one).
        hold = await self.limits.admit(paying, uuid, pan, attempt.tran_uuid)
        claim = await self.transitions.apply(
            lifecycle.claiming(provider, uuid, attempt, sealed, now + self.rules.length)
        )
        if claim is None:
            await self.limits.release(hold)  # issue 11: not claimed, nothing held
            raise await self._why_not_claimable(provider, uuid)
        log.info("claim %s… claimed, attempt %d", uuid[:8], len(claim.attempts))
        self.background.spawn(self._run(claim))
        return claim

    async def _why_not_claimable(self, provider: str, uuid: str) -> ApiError:
        claim = await self.store.claims.get(provider, uuid)
        if claim is None:
            return not_found("No such claim.")
        claim = await self.expire_if_due(claim)
        if claim.status is ClaimStatus.EXPIRED:
            return ApiError(410, "claim_expired", "This claim has expired.")
        if claim.status is ClaimStatus.CANCELLED:
            return ApiError(410, "claim_cancelled", "This claim was cancelled.")
        return ApiError(
            409, "already_claimed", f"This claim has already been submitted; it is {claim.status}."
        )

    async def customer_claim(self, provider: str, uuid: str) -> Claim | None:
        """The claim behind a claim link, expired first if its time has passed."""
        await self.providers.accepting_claims(provider)  # issue 11: 403 if suspended
        claim = await self.store.claims.get(provider, uuid)
        return await self.expire_if_due(claim) if claim else None

    async def expire_if_due(self, claim: Claim) -> Claim:
        """Expire a pending claim past its time (lazily, when someone looks at it)."""
        if claim.status is ClaimStatus.PENDING and claim.expires_at <= utcnow():
            expired = await self.transitions.apply(lifecycle.expiring(claim.uuid, utcnow()))
            if expired is not None:
                return expired
            return await self.store.claims.get_any(claim.uuid) or claim
        return claim

    # -- transfers -------------------------------------------------------------------------

    async def _run(self, claim: Claim) -> None:
        """Send the claim's open attempt, holding its lease until the gateway answers."""
        current = claim.current
        if claim.status is not ClaimStatus.PROCESSING or current is None:
            return
        index, attempt = current
        if attempt.outcome is not AttemptOutcome.IN_FLIGHT:
            return
        async with self.leases.hold(claim.uuid, claim.next_at) as held:
            try:
                request = await self._request(claim, attempt, held.may_send)
            except DecryptionError:
                log.error("claim %s…: a stored card does not decrypt; failing it", claim.uuid[:8])
                unusable = TransferResult(
                    Outcome.DECLINED, attempt.tran_uuid, None, "The payout card could not be used."
                )
                await self._apply(claim, index, unusable, definitive=True)
                return
            if not await held.ready_to_send():
                log.warning(
                    "claim %s… attempt %d: lease lost before sending; its new holder settles it",
                    claim.uuid[:8],
                    index + 1,
                )
                return
            result = await self.gateway.transfer(request)
        log.info(
            "claim %s… attempt %d: %s %s", claim.uuid[:8], index + 1, result.outcome, result.code
        )
        await self._apply(claim, index, result)

    async def _request(
        self, claim: Claim, attempt: Attempt, may_send: Callable[[], bool]
    ) -> TransferRequest:
        provider = await self.providers.by_name(claim.provider)
        if provider is None or claim.card_pan is None:
            raise DecryptionError("missing card")
        paying: Card = self.providers.open_card(provider)
        to_pan = self.keys.open(claim.card_pan, aad("claims", claim.uuid, "card.pan"))
        return TransferRequest(attempt.tran_uuid, paying, to_pan, claim.amount, may_send=may_send)

    def decide(
        self, claim: Claim, index: int, result: TransferResult, definitive: bool = False
    ) -> lifecycle.Decision:
        """``lifecycle.decide`` with this service's settings; the switch's own words are
        stored and shown to the provider, so any card number in them is masked first."""
        s = self.settings
        return lifecycle.decide(
            claim.attempts[index],
            index + 1,
            replace(result, message=mask(result.message)),
            utcnow(),
            settle_grace=timedelta(seconds=s.grace),
            recheck=timedelta(seconds=min(s.reconcile_interval, s.attempt_lease)),
            definitive=definitive,
        )

    async def _apply(
        self, claim: Claim, index: int, result: TransferResult, definitive: bool = False
    ) -> Claim | None:
        decision = self.decide(claim, index, result, definitive)
        transition = lifecycle.settling(claim, index, decision, utcnow(), self.rules.length)
        updated = await self.transitions.apply(transition)
        if updated is not None and decision.next_attempt is not None:
            self.background.spawn(self._run(updated))
        return updated

    # -- reconciliation and expiry ---------------------------------------------------------

    async def reconcile_once(self, include_unknown: bool = False) -> int:
        """Settle every processing claim whose lease ran out; returns how many it looked at."""
        now = utcnow()
        due = await self.store.claims.due_for_reconcile(now, RECONCILE_BATCH, include_unknown)
        gate = asyncio.Semaphore(RECONCILE_PARALLEL)

        async def one(claim: Claim) -> None:
            async with gate:
                taken = await self.store.claims.take_lease(claim, utcnow() + self.rules.length)
                if taken is None or taken.current is None:
                    return
                index, attempt = taken.current
                if not attempt.outcome.open:
                    log.warning("claim %s… processing with a settled attempt", taken.uuid[:8])
                    return
                async with self.leases.hold(taken.uuid, taken.next_at):
                    result = await self.gateway.status(attempt.tran_uuid)
                log.info(
                    "claim %s… reconciled attempt %d: %s %s",
                    taken.uuid[:8],
                    index + 1,
                    result.outcome,
                    result.code,
                )
                await self._apply(taken, index, result)

        await asyncio.gather(*(one(c) for c in due))
        return len(due)

    async def expire_once(self) -> int:
        expired = 0
        for uuid in await self.store.claims.overdue_pending(utcnow(), RECONCILE_BATCH):
            if await self.transitions.apply(lifecycle.expiring(uuid, utcnow())) is not None:
                expired += 1
        return expired

    async def tick(self) -> None:
        """One round of background work, under a short lease so processes take turns and a
        dead process's turn passes to another within two rounds."""
        now = utcnow()
        hold = timedelta(seconds=self.settings.reconcile_interval * 2)
        if await self.store.leases.acquire("payouts", self.holder, now, now + hold):
            await self.reconcile_once()
            await self.expire_once()

    def start(self) -> None:
        self.background.every(self.settings.reconcile_interval, self.tick)

    async def stop(self, deadline: float = 10.0) -> None:
        """Stop periodic work and give in-flight transfers until ``deadline`` to finish;
        anything still open then is left, safely, to reconciliation."""
        await self.background.stop(deadline)
