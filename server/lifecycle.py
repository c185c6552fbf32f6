"""The claim lifecycle as pure rules: which status may follow which, and what a gateway's
answer makes of an attempt (docs/DESIGN.md section 6).

Nothing here does I/O, so every rule is pinned by a fast table test
(``tests/test_lifecycle.py``). A change of status is described as a ``Transition``; the store
applies it as one compare-and-set (``ClaimStore.apply``) and ``server.transitions`` fires the
terminal hooks, so there is one way to change a claim and one place that reacts to its end.
"""

from __future__ import annotations

import uuid as uuidlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from gateways.base import Outcome, TransferResult
from server.crypto import Sealed
from server.models import Attempt, AttemptOutcome, Claim, ClaimStatus

MAX_ATTEMPTS = 3
NOT_FOUND_MESSAGE = "The transfer did not go through; no money moved."
# A finished claim owes its webhook event from its final write on; the settling process
# writes the event at once, and only if it did not (it crashed) does the outbox sweep write
# it, this long after the claim ended.
EVENT_OWED_GRACE = timedelta(seconds=10)

P, R = ClaimStatus.PENDING, ClaimStatus.PROCESSING
# Which status may follow which. Terminal states have no successor.
NEXT: Mapping[ClaimStatus, frozenset[ClaimStatus]] = {
    P: frozenset({R, ClaimStatus.EXPIRED, ClaimStatus.CANCELLED}),
    # processing -> processing: an unknown answer, or a lost attempt replaced by a new one;
    # processing -> pending: the customer's card was refused, they may try another.
    R: frozenset({R, P, ClaimStatus.SUCCEEDED, ClaimStatus.FAILED}),
    ClaimStatus.SUCCEEDED: frozenset(),
    ClaimStatus.FAILED: frozenset(),
    ClaimStatus.EXPIRED: frozenset(),
    ClaimStatus.CANCELLED: frozenset(),
}
# Terminal states the provider is told about by webhook (it cancelled the others itself).
NOTIFIED = frozenset({ClaimStatus.SUCCEEDED, ClaimStatus.FAILED, ClaimStatus.EXPIRED})


@dataclass(frozen=True)
class Guard:
    """What must still hold of the stored claim for a transition to apply (besides its
    status): the compare of the compare-and-set."""

    provider: str | None = None  # the claim belongs to this provider
    expired: bool | None = None  # True: expires_at <= at; False: expires_at > at
    room_for_attempt: bool = False  # fewer than MAX_ATTEMPTS attempts so far
    open_attempt: tuple[int, str] | None = None  # (index, gateway UUID) is still open


@dataclass(frozen=True)
class Decision:
    """What a gateway's answer makes of an attempt and its claim."""

    outcome: AttemptOutcome
    status: ClaimStatus
    code: int | None = None
    message: str | None = None
    reference: str | None = None
    next_attempt: Attempt | None = None  # started in the same write
    recheck_in: timedelta | None = None  # unknown: ask the switch again after this


@dataclass(frozen=True)
class Transition:
    """One atomic change of one claim, applied only while ``guard`` and ``source`` hold."""

    uuid: str
    source: ClaimStatus
    target: ClaimStatus
    at: datetime
    guard: Guard = field(default_factory=Guard)
    decision: Decision | None = None  # settles the attempt named by guard.open_attempt
    begin: Attempt | None = None  # a new attempt (with its gateway UUID) stored in the write
    card: Sealed | None = None  # the receiving card, stored with the first attempt
    lease_until: datetime | None = None  # processing: who holds the claim, until when
    expires_at: datetime | None = None  # back to pending: when it expires (its next deadline)

    def __post_init__(self) -> None:
        if self.target not in NEXT[self.source]:
            raise ValueError(f"a claim cannot go from {self.source} to {self.target}")
        if self.decision is not None and self.guard.open_attempt is None:
            raise ValueError("a settlement must name the open attempt it settles")

    @property
    def terminal(self) -> bool:
        return self.target.terminal

    @property
    def notifies(self) -> bool:
        """The write marks the claim as owing its webhook event (the outbox's first half)."""
        return self.target in NOTIFIED

    @property
    def next_at(self) -> datetime | None:
        """When the service must next act on the claim after this transition: its expiry
        (pending), its lease (processing), the deadline for writing its webhook event
        (succeeded, failed, expired), never (cancelled). One indexed field serves expiry,
        reconciliation and the outbox's recovery sweep."""
        if self.target is P:
            return self.expires_at
        if self.target is R:
            return self.lease_until
        if self.notifies:
            return self.at + EVENT_OWED_GRACE
        return None


def claiming(
    provider: str, uuid: str, attempt: Attempt, card: Sealed, lease_until: datetime
) -> Transition:
    """pending -> processing, storing the card and the attempt's gateway UUID before the
    gateway is called; only while the claim is unexpired and has attempts left."""
    return Transition(
        uuid,
        P,
        R,
        attempt.started_at,
        Guard(provider=provider, expired=False, room_for_attempt=True),
        begin=attempt,
        card=card,
        lease_until=lease_until,
    )


def cancelling(provider: str, uuid: str, now: datetime) -> Transition:
    return Transition(uuid, P, ClaimStatus.CANCELLED, now, Guard(provider=provider))


def expiring(uuid: str, now: datetime) -> Transition:
    """pending -> expired, only once its time has passed."""
    return Transition(uuid, P, ClaimStatus.EXPIRED, now, Guard(expired=True))


def settling(
    claim: Claim, index: int, decision: Decision, now: datetime, lease: timedelta
) -> Transition:
    """processing -> the decision's status, only while attempt ``index`` is still open."""
    lease_until = None
    if decision.next_attempt is not None:
        lease_until = now + lease
    elif decision.recheck_in is not None:
        lease_until = now + decision.recheck_in
    return Transition(
        claim.uuid,
        R,
        decision.status,
        now,
        Guard(open_attempt=(index, claim.attempts[index].tran_uuid)),
        decision=decision,
        begin=decision.next_attempt,
        lease_until=lease_until,
        expires_at=claim.expires_at,
    )


def decide(
    attempt: Attempt,
    used: int,
    result: TransferResult,
    now: datetime,
    *,
    settle_grace: timedelta,
    recheck: timedelta,
    definitive: bool = False,
) -> Decision:
    """The outcome table of docs/DESIGN.md section 6, for the ``used``-th attempt.

    - approved: succeeded.
    - declined: failed; but a decline the customer can fix (their card) returns the claim to
      pending while attempts remain, unless ``definitive`` (our side cannot pay at all).
    - not found, once ``settle_grace`` has passed since the attempt started: nothing moved,
      so a new attempt with a fresh UUID (or failed after the last one).
    - anything else (unknown, or not found too soon to believe): stay processing and ask the
      switch again after ``recheck``.
    """
    if result.outcome is Outcome.APPROVED:
        return Decision(
            AttemptOutcome.APPROVED,
            ClaimStatus.SUCCEEDED,
            result.code,
            result.message or "Approved",
            reference=result.reference,
        )
    if result.outcome is Outcome.DECLINED:
        retry = result.customer_fixable and used < MAX_ATTEMPTS and not definitive
        return Decision(
            AttemptOutcome.DECLINED,
            P if retry else ClaimStatus.FAILED,
            result.code,
            result.message or "Declined",
        )
    if result.outcome is Outcome.NOT_FOUND and now - attempt.started_at >= settle_grace:
        if used < MAX_ATTEMPTS:
            fresh = Attempt(str(uuidlib.uuid4()), now, attempt.card_last4)
            return Decision(
                AttemptOutcome.NOT_FOUND, R, None, NOT_FOUND_MESSAGE, next_attempt=fresh
            )
        return Decision(AttemptOutcome.NOT_FOUND, ClaimStatus.FAILED, None, NOT_FOUND_MESSAGE)
    return Decision(
        AttemptOutcome.UNKNOWN,
        R,
        result.code,
        result.message or "Awaiting the switch's answer",
        recheck_in=recheck,
    )


def attempts_left(attempts: int) -> int:
    return max(0, MAX_ATTEMPTS - attempts)


@dataclass(frozen=True)
class LeaseRules:
    """The lease a process holds on a processing claim while it runs the claim's attempt (or
    asks the switch about it). Leases are short and the holder renews them every third of
    their length while a gateway call runs, so a long switch timeout never needs a long
    lease, and a dead or frozen holder's claims are taken over within one lease. A holder
    starts a send only with a third of its lease left, and never once it lost it."""

    length: timedelta

    @property
    def renew_every(self) -> timedelta:
        return self.length / 3

    def may_send(self, until: datetime | None, now: datetime) -> bool:
        return until is not None and now < until - self.length / 3
