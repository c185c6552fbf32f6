"""Paying-card checks that are not an oracle (docs/DESIGN.md section 12).

Registration and card changes verify the paying card with the switch. Without care that is a
cheap way to guess a victim's IPIN (or lock their card at the switch): so

- every refusal is answered the same way, byte for byte (400 ``card_rejected``, "The card
  could not be verified."), whatever the switch said, and whether or not it was asked; the
  switch's code and words go only to the logs, ``/metrics`` and the audit log;
- failed checks are counted per card (by the card's HMAC name, across every provider), per
  client address and per provider (``server/store/check_failures.py``); once one of them
  reaches its limit in 24 hours (``CASHOUT_CARD_CHECK_FAILURES`` for a card,
  ``CASHOUT_CARD_CHECK_SOURCE_FAILURES`` for an address or a provider), checks it is part of
  are not sent to the switch for 24 hours after the last failure;
- a check takes its place in every counter *before* the switch is asked, so concurrent
  checks cannot overtake the count.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from gateways.base import Card, Gateway, mask_pan
from server import metrics
from server.audit import AuditLog
from server.crypto import CardNamer
from server.errors import ApiError
from server.logs import mask
from server.models import Caller, utcnow
from server.settings import Settings
from server.store import Store
from server.store.check_failures import Slot

log = logging.getLogger("cashout.card_checks")

WINDOW = timedelta(hours=24)


def rejected() -> ApiError:
    """The one answer to every refusal: nothing in it depends on why."""
    return ApiError(
        400,
        "card_rejected",
        "The card could not be verified.",
        [{"field": "pan", "problem": "could not be verified"}],
    )


@dataclass(frozen=True)
class Counter:
    scope: str  # card, address or provider
    key: str
    limit: int


class CardChecks:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        gateway: Gateway,
        namer: CardNamer,
        audit: AuditLog,
    ) -> None:
        self.settings = settings
        self.store = store
        self.gateway = gateway
        self.namer = namer
        self.audit = audit

    def _counters(self, card: Card, caller: Caller, provider: str | None) -> list[Counter]:
        s = self.settings
        found = [Counter("card", "card:" + self.namer.name(card.pan), s.card_check_failures)]
        if caller.address:
            found.append(
                Counter("address", "address:" + caller.address, s.card_check_source_failures)
            )
        if provider:
            found.append(Counter("provider", "provider:" + provider, s.card_check_source_failures))
        return found

    async def verify(self, card: Card, caller: Caller, provider: str | None = None) -> None:
        """Return when the switch accepts the card (or cannot check cards at all); raise
        ``rejected()`` for any refusal, 503 when the switch gave no answer."""
        counters = self._counters(card, caller, provider)
        now = utcnow()
        slots: list[Slot] = []
        for counter in counters:
            slot = await self.store.check_failures.take(
                counter.key, counter.limit, now, now + WINDOW
            )
            if slot is None:
                await self._give_back(slots)
                metrics.CARD_CHECKS.labels("locked").inc()
                log.warning(
                    "card check of %s not sent to the switch: the %s is locked out",
                    mask_pan(card.pan),
                    counter.scope,
                )
                raise rejected()
            slots.append(slot)
        try:
            result = await self.gateway.verify_card(card)
        except BaseException:
            await self._give_back(slots)
            raise
        if result is None or result.ok:
            await self._give_back(slots)
            metrics.CARD_CHECKS.labels("verified" if result else "unchecked").inc()
            return
        if result.code is None:  # no answer says nothing about the card: try again later
            await self._give_back(slots)
            metrics.CARD_CHECKS.labels("unavailable").inc()
            raise ApiError(
                503,
                "unavailable",
                "The payment switch could not check the card; try again shortly.",
            )
        metrics.CARD_CHECKS.labels("rejected").inc()
        last4 = mask_pan(card.pan)
        log.warning(
            "card check of %s refused by the switch: code %s (%s)",
            last4,
            result.code,
            mask(result.message),
        )
        await self.audit.record(
            provider,
            caller,
            "card_check.rejected",
            {"card": last4, "code": result.code, "message": mask(result.message)},
        )
        failed_at = utcnow()
        for counter, slot in zip(counters, slots, strict=True):
            count = await self.store.check_failures.keep(slot, failed_at + WINDOW)
            if count >= counter.limit:
                metrics.CARD_CHECK_LOCKOUTS.labels(counter.scope).inc()
                log.warning(
                    "card checks locked out for 24 hours: the %s (card %s) has %d failures",
                    counter.scope,
                    last4,
                    count,
                )
                await self.audit.record(
                    provider,
                    caller,
                    "card_check.locked",
                    {"scope": counter.scope, "card": last4, "failures": count},
                )
        raise rejected()

    async def _give_back(self, slots: list[Slot]) -> None:
        for slot in slots:
            await self.store.check_failures.give_back(slot)
