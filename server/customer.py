"""The customer's side of a claim, as the claim page needs it (docs/DESIGN.md section 5).

- The claim together with who sends it (display name, support contact), so the page can say
  who is paying and whom to ask.
- The card check before the one look (Confirm / Change): a valid number comes back sealed to
  this claim for a few minutes (AES-GCM with the data key ring, bound to the claim's UUID), and
  Confirm posts that sealed value back. The number is never stored anywhere in clear, nor kept
  on the server between the two steps; only the customer's own page carries it.
- How often the processing page refreshes itself: less often as time passes, and not at all
  after about a minute.
"""

from __future__ import annotations

import base64
import binascii
import math
import time
from dataclasses import dataclass, field
from datetime import datetime

from server import validation
from server.crypto import NONCE_BYTES, DecryptionError, KeyRing, Sealed, aad
from server.errors import ApiError
from server.models import Claim, Provider, utcnow
from server.payouts import PayoutEngine
from server.store import Store

# How long the Confirm step keeps a checked card: enough to compare it with the card in hand.
CONFIRM_SECONDS = 15 * 60
# Seconds between refreshes of the processing page, from the attempt's start; then it stops
# and tells the customer they may close it (about a minute in all, seven reloads).
REFRESH_STEPS = (2, 3, 5, 8, 13, 21)
PATIENCE_SECONDS = 60


@dataclass(frozen=True)
class Sender:
    """The provider as its customers see it: a name they know and someone to ask."""

    name: str
    display_name: str
    support: str | None

    @classmethod
    def of(cls, provider: Provider) -> Sender:
        return cls(provider.name, provider.display_name or provider.name, provider.support)


@dataclass(frozen=True)
class ClaimPage:
    """Everything a claim page shows: the claim and its sender."""

    claim: Claim
    sender: Sender


@dataclass(frozen=True)
class CardToConfirm:
    """A card that passed the checks, for the customer to look at once before it is paid."""

    digits: str = field(repr=False)
    sealed: str  # what the Confirm and Change buttons post back


def card_problem(text: str) -> ApiError | None:
    """Why a typed card number cannot be used (400 ``invalid_card`` whose detail names the
    problem: ``empty``, ``not_digits``, ``length`` or ``check_digit``, with ``count``, the
    digits typed), or None when it can."""
    digits = validation.card_digits(text)
    count = sum(ch.isdigit() for ch in digits)
    if not digits:
        problem = "empty"
    elif not (digits.isascii() and digits.isdigit()):
        problem = "not_digits"
    elif len(digits) not in (16, 19):
        problem = "length"
    elif validation.normalise_pan(text) is None:
        problem = "check_digit"
    else:
        return None
    return ApiError(
        400,
        "invalid_card",
        "The card number is not valid.",
        [{"field": "pan", "problem": problem, "count": str(count)}],
    )


def refresh_after(elapsed: float) -> int | None:
    """Seconds until the processing page reloads, ``elapsed`` seconds into an attempt;
    None once the customer has waited about a minute (the page then says they may leave)."""
    if elapsed >= PATIENCE_SECONDS:
        return None
    total = 0
    for step in REFRESH_STEPS:
        total += step
        if elapsed < total:
            return step
    return max(1, math.ceil(PATIENCE_SECONDS - elapsed))


def waited(claim: Claim, now: datetime | None = None) -> float:
    """Seconds the customer has been waiting on the current attempt."""
    start = claim.attempts[-1].started_at if claim.attempts else claim.claimed_at
    if start is None:
        return 0.0
    return max(0.0, ((now or utcnow()) - start).total_seconds())


class CustomerService:
    def __init__(self, store: Store, keys: KeyRing, payouts: PayoutEngine) -> None:
        self.store = store
        self.keys = keys
        self.payouts = payouts

    async def page(self, name: str, uuid: str) -> ClaimPage | None:
        """The claim behind a claim link (expired first if its time has passed) and who
        sends it; None for an unknown link."""
        claim = await self.payouts.customer_claim(name, uuid)
        if claim is None:
            return None
        provider = await self.store.providers.get(name)
        if provider is None:
            return None
        return ClaimPage(claim, Sender.of(provider))

    def check_card(self, claim: Claim, text: str) -> CardToConfirm:
        """A typed number ready for the Confirm step, or CardProblem."""
        refused = card_problem(text)
        if refused is not None:
            raise refused
        digits = validation.normalise_pan(text)
        assert digits is not None
        return CardToConfirm(digits, self._seal(claim.uuid, digits))

    def opened(self, uuid: str, sealed: str) -> str:
        """The card a Confirm or Change button carries back; ApiError when it is not one we
        sealed for this claim in the last CONFIRM_SECONDS."""
        try:
            if len(sealed) > 512:
                raise ValueError("not a sealed card")
            kid, body = (_unb64(part) for part in sealed.split("."))
            value = Sealed(kid.decode(), body[:NONCE_BYTES], body[NONCE_BYTES:])
            plain = self.keys.open(value, _confirm_aad(uuid))
            digits, _, until = plain.partition(":")
            fresh = int(until) >= time.time()
        except (ValueError, binascii.Error, UnicodeDecodeError, DecryptionError):
            fresh = False
        if not fresh:
            raise ApiError(
                400,
                "confirmation_expired",
                "Enter the card number again.",
                [{"field": "pan", "problem": "confirmation_expired"}],
            )
        return digits

    async def confirm(self, name: str, uuid: str, sealed: str) -> Claim:
        """Claim with the card the customer looked at (the one compare-and-set of
        ``PayoutEngine.submit``: a second Confirm gets 409 already_claimed)."""
        return await self.payouts.submit(name, uuid, self.opened(uuid, sealed))

    def _seal(self, uuid: str, digits: str) -> str:
        until = int(time.time()) + CONFIRM_SECONDS
        sealed = self.keys.seal(f"{digits}:{until}", _confirm_aad(uuid))
        return f"{_b64(sealed.kid.encode())}.{_b64(sealed.nonce + sealed.ct)}"


def _confirm_aad(uuid: str) -> bytes:
    return aad("claims", uuid, "confirm.pan")


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
