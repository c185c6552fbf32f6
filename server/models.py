"""Typed records that cross module boundaries (store <-> engine <-> handlers)."""

from __future__ import annotations

import base64
import binascii
import enum
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from server.crypto import Sealed


class ClaimStatus(enum.StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset(
    {ClaimStatus.SUCCEEDED, ClaimStatus.FAILED, ClaimStatus.EXPIRED, ClaimStatus.CANCELLED}
)


def utcnow() -> datetime:
    """BSON keeps milliseconds; truncating here keeps values equal after a round trip."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def as_utc(value: datetime) -> datetime:
    """The driver hands back naive UTC datetimes; make them aware."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def rfc3339(value: datetime | None) -> str | None:
    if value is None:
        return None
    return as_utc(value).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class SealedCard:
    """A provider's paying card as stored: every part encrypted, last four in clear."""

    pan: Sealed
    exp_date: Sealed
    ipin: Sealed
    last4: str


@dataclass(frozen=True)
class WebhookSecret:
    """One signing secret; several are live for a while after a rotation."""

    secret_id: str
    secret: Sealed
    created_at: datetime
    expires_at: datetime | None = None


@dataclass(frozen=True)
class Provider:
    name: str
    key_hash: str
    card: SealedCard
    endpoint: str
    secrets: tuple[WebhookSecret, ...]
    created_at: datetime
    updated_at: datetime
    # What its customers see on a claim page: a name they know (the slug when unset) and
    # where to ask for help.
    display_name: str | None = None
    support: str | None = None
    # Webhook endpoint health (docs/DESIGN.md section 12): since when every delivery has
    # failed (None after a success), and when and why the endpoint was disabled.
    endpoint_failing_since: datetime | None = None
    endpoint_disabled_at: datetime | None = None
    endpoint_disabled_reason: str | None = None

    @property
    def endpoint_enabled(self) -> bool:
        return self.endpoint_disabled_at is None

    suspended_at: datetime | None = None  # set by 'admin suspend'; see server/admin.py
    suspended_reason: str | None = None

    @property
    def suspended(self) -> bool:
        return self.suspended_at is not None


class AttemptOutcome(enum.StrEnum):
    IN_FLIGHT = "in_flight"  # sent, or about to be; only the lease holder may settle it
    UNKNOWN = "unknown"  # the gateway gave no clear answer; reconciliation asks for status
    APPROVED = "approved"
    DECLINED = "declined"
    NOT_FOUND = "not_found"  # the switch never saw it: nothing moved

    @property
    def open(self) -> bool:
        return self in (AttemptOutcome.IN_FLIGHT, AttemptOutcome.UNKNOWN)


@dataclass(frozen=True)
class Attempt:
    """One transfer attempt; its gateway UUID is stored before the gateway is called."""

    tran_uuid: str
    started_at: datetime
    card_last4: str
    outcome: AttemptOutcome = AttemptOutcome.IN_FLIGHT
    code: int | None = None
    message: str | None = None
    finished_at: datetime | None = None


@dataclass(frozen=True)
class Claim:
    uuid: str
    provider: str
    ref: str  # the provider's own id
    amount: int
    status: ClaimStatus
    created_at: datetime
    expires_at: datetime
    day: str  # UTC day the amount counts against the provider's daily total
    claimed_at: datetime | None = None
    completed_at: datetime | None = None
    card_last4: str | None = None
    card_pan: Sealed | None = None
    response_code: int | None = None
    response_message: str | None = None
    reference: str | None = None  # the switch's reference of the approved transfer
    attempts: tuple[Attempt, ...] = field(default_factory=tuple)
    # When the service must next act on it: expiry (pending), the end of the current
    # holder's lease (processing), the deadline for its webhook event (finished).
    next_at: datetime | None = None

    @property
    def current(self) -> tuple[int, Attempt] | None:
        """The latest attempt and its index."""
        return (len(self.attempts) - 1, self.attempts[-1]) if self.attempts else None


class EventStatus(enum.StrEnum):
    PENDING = "pending"  # waiting for its next attempt
    DELIVERED = "delivered"
    FAILED = "failed"  # retries exhausted, or the endpoint answered 410


@dataclass(frozen=True)
class Delivery:
    """One attempt to deliver an event, as the delivery log shows it."""

    at: datetime
    http_status: int | None
    latency_ms: int
    error: str | None = None


@dataclass(frozen=True)
class WebhookEvent:
    """An outbox entry. ``event_id`` is the ``webhook-id`` header on every attempt."""

    event_id: str
    provider: str
    claim: str | None  # None for test events
    body: str  # the exact JSON bytes signed and sent, the same on every attempt
    status: EventStatus
    created_at: datetime
    next_attempt_at: datetime | None
    tries: int  # attempts in the current round (redelivery starts a new round)
    attempts: tuple[Delivery, ...] = ()
    delivered_at: datetime | None = None
    lease_until: datetime | None = None
    endpoint: str | None = None  # sent here rather than to the provider's current endpoint


# -- production controls (docs/DESIGN.md section 12) --------------------------------------


@dataclass(frozen=True)
class Caller:
    """Who asks for a change, for the audit log: an API key's id (never the key), ``admin``
    or another named actor, and the client address."""

    actor: str
    address: str | None = None


ADMIN = Caller("admin")


@dataclass(frozen=True)
class AuditEntry:
    """One change a provider or the operator made. ``changes`` never holds a secret."""

    entry_id: str
    provider: str | None  # None for what happened before a provider existed
    at: datetime
    actor: str
    address: str | None
    action: str
    changes: dict[str, Any]


@dataclass(frozen=True)
class Invite:
    """A single-use registration code, stored only as its hash (``code_hash``)."""

    code_hash: str
    note: str | None
    created_at: datetime
    expires_at: datetime
    used_by: str | None = None
    used_at: datetime | None = None

    @property
    def invite_id(self) -> str:
        return "inv_" + self.code_hash[:12]


@dataclass(frozen=True)
class CardHold:
    """Money a claim submission holds against the daily limits of its receiving card and
    the paying card, until the transfer is paid (kept) or not (given back). Its id is the
    submission's gateway transaction UUID."""

    hold_id: str
    claim: str
    day: str
    amount: int
    to_card: str  # the cards' HMAC names (server.crypto.CardNamer), never the numbers
    from_card: str
    created_at: datetime
    released: bool = False


@dataclass(frozen=True)
class OwedEvent:
    """A security event written in the same update as the change it reports (the first
    half of the outbox), then moved to the events collection."""

    event_id: str
    endpoint: str
    body: str
    created_at: datetime


@dataclass(frozen=True)
class SystemFigures:
    """What the whole system looks like right now (for metrics and operators)."""

    claims_by_status: dict[str, int]
    reconcile_backlog: int
    events_by_status: dict[str, int]
    outbox_lag_seconds: float


@dataclass(frozen=True)
class PageRequest:
    status: str | None
    limit: int
    after: tuple[datetime, str] | None  # (created_at, _id) of the last item already seen


def encode_cursor(created_at: datetime, key: str) -> str:
    raw = f"{int(created_at.timestamp() * 1000)}:{key}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str] | None:
    """None for anything that is not a cursor ``encode_cursor`` made."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        millis, _, uuid = raw.partition(":")
        return datetime.fromtimestamp(int(millis) / 1000, UTC), uuid
    except (ValueError, binascii.Error, UnicodeDecodeError, OverflowError, OSError):
        return None
