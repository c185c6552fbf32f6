"""Daily money limits per card, across providers (docs/DESIGN.md section 12).

Limits per provider name are easy to sidestep: register one card under three names, or send
every claim to one receiving card. So besides them, each UTC day:

- a receiving card may be paid at most ``CASHOUT_CARD_DAILY_CLAIMS`` claims and
  ``CASHOUT_CARD_DAILY_AMOUNT`` in all, whichever providers pay it;
- at most ``CASHOUT_PAYING_CARD_DAILY_AMOUNT`` may leave one paying card, whichever
  providers registered it.

Cards are named by their HMAC (``server.crypto.CardNamer``), never their numbers. A claim
submission *holds* its amount against both cards before the claim is claimed (``admit``:
atomic ``$inc`` under the limit, ``server/store/card_totals.py``), so concurrent submissions
on any number of processes never pass a limit. The hold stays when the transfer pays, and is
given back (once: ``CardHold`` is released by a compare-and-set) when the claim is not
claimed after all, or its transfer comes back declined, not found or failed (``settled``, a
hook on every claim transition). A crash between holding and claiming can leave a hold that
is never given back: the limits can refuse too early that day, never let too much through.

Over a receiving card's limit the submission is refused with 422 ``card_limit_reached``; over
the paying card's, with 422 ``sender_limit_reached``. Either way the claim stays pending, and
the customer can try another card (or the same one the next day) on the same link.
"""

from __future__ import annotations

import logging

from server import metrics
from server.batching import Batcher
from server.crypto import CardNamer, DecryptionError
from server.errors import ApiError
from server.lifecycle import Transition
from server.logs import mask
from server.models import CardHold, Claim, ClaimStatus, Provider, utcnow
from server.providers import ProviderService
from server.settings import Settings
from server.store import Store

log = logging.getLogger("cashout.card_limits")

TO, FROM = "to", "from"
# A transfer that ends here moved no money: what its submission held is given back.
NOTHING_MOVED = frozenset({ClaimStatus.PENDING, ClaimStatus.FAILED})


def card_limit_reached() -> ApiError:
    return ApiError(
        422,
        "card_limit_reached",
        "This card has reached its daily limit; use another card or try again tomorrow.",
        [
            {
                "field": "pan",
                "problem": "has reached its daily limit; use another card or try again tomorrow",
            }
        ],
    )


def sender_limit_reached() -> ApiError:
    return ApiError(
        422,
        "sender_limit_reached",
        "The sender's daily limit is reached; the claim stays open: try again tomorrow.",
        [
            {
                "field": "pan",
                "problem": "cannot be paid today: the sender's daily limit is reached; "
                "please try again tomorrow",
            }
        ],
    )


P = ClaimStatus.PENDING


class CardLimits:
    def __init__(
        self, settings: Settings, store: Store, providers: ProviderService, namer: CardNamer
    ) -> None:
        self.settings = settings
        self.store = store
        self.providers = providers
        self.namer = namer
        self._paying_names: dict[tuple[str, bytes], str] = {}
        # Group commit, as on the rest of the pay path: submissions arriving together share
        # one read of their claims and one insert of their holds.
        batch = settings.db_batch
        self._claims: Batcher[str, Claim | None] = Batcher(
            "claim_reads", self._read_claims, max_batch=batch, observe=metrics.observe_batch
        )
        self._holds: Batcher[CardHold, None] = Batcher(
            "card_holds", self._insert_holds, max_batch=batch, observe=metrics.observe_batch
        )

    def _paying_name(self, provider: Provider) -> str:
        """The paying card's name (its keyed HMAC), kept per stored card: decrypting the
        card on every submission only to name it again cost three AES operations each. Only
        the name is kept, never the card; a new card (a new ciphertext) gets a new entry."""
        key = (provider.name, provider.card.pan.nonce)
        name = self._paying_names.get(key)
        if name is None:
            name = self.namer.name(self.providers.open_pan(provider))
            if len(self._paying_names) > 10_000:
                self._paying_names.clear()
            self._paying_names[key] = name
        return name

    async def _read_claims(self, uuids: list[str]) -> list[Claim | None]:
        found = await self.store.claims.get_many(uuids)
        return [found.get(u) for u in uuids]

    async def _insert_holds(self, holds: list[CardHold]) -> list[None]:
        await self.store.card_holds.insert_many(holds)
        return [None] * len(holds)

    async def admit(
        self, provider: Provider | None, uuid: str, pan: str, hold_id: str
    ) -> CardHold | None:
        """Hold a pending claim's amount against both cards' daily limits before it is
        claimed (``hold_id``: the new attempt's gateway UUID), or raise 422. None when there
        is nothing to hold: no such claim or provider, or not pending (claiming will refuse)."""
        if provider is None:
            return None
        claim = await self._claims.submit(uuid)
        if claim is None or claim.provider != provider.name or claim.status is not P:
            return None
        try:
            paying_name = self._paying_name(provider)
        except DecryptionError:
            return None  # the transfer cannot be made anyway; it fails on its own
        s, now = self.settings, utcnow()
        hold = CardHold(
            hold_id,
            uuid,
            now.strftime("%Y-%m-%d"),
            claim.amount,
            self.namer.name(pan),
            paying_name,
            now,
        )
        totals = self.store.card_totals
        await self._holds.submit(hold)
        if not await totals.reserve(
            hold.day, TO, hold.to_card, hold.amount, s.card_daily_amount, s.card_daily_claims
        ):
            await self.store.card_holds.mark_released(hold.hold_id)
            metrics.CARD_LIMIT_REFUSALS.labels("receiving").inc()
            log.info("claim %s…: the receiving card's daily limit is reached", uuid[:8])
            raise card_limit_reached()
        if not await totals.reserve(
            hold.day, FROM, hold.from_card, hold.amount, s.paying_card_daily_amount
        ):
            await totals.release(hold.day, TO, hold.to_card, hold.amount)
            await self.store.card_holds.mark_released(hold.hold_id)
            metrics.CARD_LIMIT_REFUSALS.labels("paying").inc()
            log.warning(
                "claim %s… of %s: the paying card's daily limit is reached",
                uuid[:8],
                mask(provider.name),
            )
            raise sender_limit_reached()
        return hold

    async def release(self, hold: CardHold | None) -> None:
        """Give a hold back (its submission did not claim the claim)."""
        if hold is not None:
            await self._give_back(hold)

    async def settled(self, t: Transition, claim: Claim) -> None:
        """A transition hook: a transfer that ended without moving money gives back what its
        submission held. Holds are named by their attempt's UUID, so only the submission
        that won the claim is released here (a loser releases its own)."""
        if t.source is not ClaimStatus.PROCESSING or claim.status not in NOTHING_MOVED:
            return
        attempts = {a.tran_uuid for a in claim.attempts}
        for hold in await self.store.card_holds.live_for(claim.uuid):
            if hold.hold_id in attempts:
                await self._give_back(hold)

    async def _give_back(self, hold: CardHold) -> None:
        if await self.store.card_holds.mark_released(hold.hold_id):
            await self.store.card_totals.release(hold.day, TO, hold.to_card, hold.amount)
            await self.store.card_totals.release(hold.day, FROM, hold.from_card, hold.amount)
