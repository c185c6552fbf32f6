"""Documents <-> typed records. The only place that knows how a record is laid out in
MongoDB, so a field's name is written once."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from server.crypto import Sealed
from server.models import (
    Attempt,
    AttemptOutcome,
    AuditEntry,
    CardHold,
    Claim,
    ClaimStatus,
    Delivery,
    EventStatus,
    Invite,
    OwedEvent,
    Provider,
    SealedCard,
    WebhookEvent,
    WebhookSecret,
    as_utc,
)


def opt_dt(value: datetime | None) -> datetime | None:
    return as_utc(value) if value else None


def sealed_doc(value: Sealed) -> dict[str, Any]:
    return value.to_doc()


# -- providers --------------------------------------------------------------------------------


def card_doc(card: SealedCard) -> dict[str, Any]:
    return {
        "pan": sealed_doc(card.pan),
        "exp": sealed_doc(card.exp_date),
        "ipin": sealed_doc(card.ipin),
        "last4": card.last4,
    }


def secrets_doc(secrets: tuple[WebhookSecret, ...]) -> list[dict[str, Any]]:
    return [
        {
            "sid": s.secret_id,
            "secret": sealed_doc(s.secret),
            "created_at": s.created_at,
            "expires_at": s.expires_at,
        }
        for s in secrets
    ]


def provider_doc(p: Provider) -> dict[str, Any]:
    return {
        "_id": p.name,
        "key_hash": p.key_hash,
        "card": card_doc(p.card),
        "endpoint": p.endpoint,
        "secrets": secrets_doc(p.secrets),
        "created_at": p.created_at,
        "updated_at": p.updated_at,
        "display_name": p.display_name,
        "support": p.support,
        **endpoint_health_doc(
            p.endpoint_failing_since, p.endpoint_disabled_at, p.endpoint_disabled_reason
        ),
    }


def endpoint_health_doc(
    failing_since: datetime | None, disabled_at: datetime | None, reason: str | None
) -> dict[str, Any]:
    """The webhook endpoint's health fields (all None: healthy, as after it is set again)."""
    return {
        "endpoint_failing_since": failing_since,
        "endpoint_disabled_at": disabled_at,
        "endpoint_disabled_reason": reason,
    }


def provider_from_doc(doc: Mapping[str, Any]) -> Provider:
    card = doc["card"]
    return Provider(
        name=doc["_id"],
        key_hash=doc["key_hash"],
        card=SealedCard(
            pan=Sealed.from_doc(card["pan"]),
            exp_date=Sealed.from_doc(card["exp"]),
            ipin=Sealed.from_doc(card["ipin"]),
            last4=card["last4"],
        ),
        endpoint=doc["endpoint"],
        secrets=tuple(
            WebhookSecret(
                secret_id=s["sid"],
                secret=Sealed.from_doc(s["secret"]),
                created_at=as_utc(s["created_at"]),
                expires_at=opt_dt(s.get("expires_at")),
            )
            for s in doc["secrets"]
        ),
        created_at=as_utc(doc["created_at"]),
        updated_at=as_utc(doc["updated_at"]),
        display_name=doc.get("display_name"),
        support=doc.get("support"),
        endpoint_failing_since=opt_dt(doc.get("endpoint_failing_since")),
        endpoint_disabled_at=opt_dt(doc.get("endpoint_disabled_at")),
        endpoint_disabled_reason=doc.get("endpoint_disabled_reason"),
        suspended_at=opt_dt((doc.get("suspended") or {}).get("at")),
        suspended_reason=(doc.get("suspended") or {}).get("reason"),
    )


# -- claims -----------------------------------------------------------------------------------


def attempt_doc(a: Attempt) -> dict[str, Any]:
    return {
        "tran_uuid": a.tran_uuid,
        "started_at": a.started_at,
        "card_last4": a.card_last4,
        "outcome": str(a.outcome),
        "code": a.code,
        "message": a.message,
        "finished_at": a.finished_at,
    }


def attempt_from_doc(a: Mapping[str, Any]) -> Attempt:
    return Attempt(
        tran_uuid=a["tran_uuid"],
        started_at=as_utc(a["started_at"]),
        card_last4=a["card_last4"],
        outcome=AttemptOutcome(a["outcome"]),
        code=a.get("code"),
        message=a.get("message"),
        finished_at=opt_dt(a.get("finished_at")),
    )


def claim_doc(c: Claim) -> dict[str, Any]:
    """A new claim (generated, so pending with no card and no attempt yet)."""
    return {
        "_id": c.uuid,
        "provider": c.provider,
        "ref": c.ref,
        "amount": c.amount,
        "status": str(c.status),
        "created_at": c.created_at,
        "expires_at": c.expires_at,
        "day": c.day,
        "attempts": [],
        "next_at": c.expires_at,
    }


def claim_from_doc(doc: Mapping[str, Any]) -> Claim:
    card = doc.get("card") or {}
    return Claim(
        uuid=doc["_id"],
        provider=doc["provider"],
        ref=doc["ref"],
        amount=doc["amount"],
        status=ClaimStatus(doc["status"]),
        created_at=as_utc(doc["created_at"]),
        expires_at=as_utc(doc["expires_at"]),
        day=doc["day"],
        claimed_at=opt_dt(doc.get("claimed_at")),
        completed_at=opt_dt(doc.get("completed_at")),
        card_last4=card.get("last4"),
        card_pan=Sealed.from_doc(card["pan"]) if card.get("pan") else None,
        response_code=doc.get("response_code"),
        response_message=doc.get("response_message"),
        reference=doc.get("reference"),
        next_at=opt_dt(doc.get("next_at")),
        attempts=tuple(attempt_from_doc(a) for a in doc.get("attempts", ())),
    )


# -- webhook events ---------------------------------------------------------------------------


def delivery_doc(d: Delivery) -> dict[str, Any]:
    return {"at": d.at, "http_status": d.http_status, "latency_ms": d.latency_ms, "error": d.error}


def event_doc(e: WebhookEvent) -> dict[str, Any]:
    return {
        "_id": e.event_id,
        "provider": e.provider,
        "claim": e.claim,
        "body": e.body,
        "status": str(e.status),
        "created_at": e.created_at,
        "next_attempt_at": e.next_attempt_at,
        "tries": e.tries,
        "attempts": [],
        "lease_until": e.lease_until or e.created_at,
        **({"endpoint": e.endpoint} if e.endpoint else {}),
    }


def event_from_doc(doc: Mapping[str, Any]) -> WebhookEvent:
    return WebhookEvent(
        event_id=doc["_id"],
        provider=doc["provider"],
        claim=doc.get("claim"),
        body=doc["body"],
        status=EventStatus(doc["status"]),
        created_at=as_utc(doc["created_at"]),
        next_attempt_at=opt_dt(doc.get("next_attempt_at")),
        tries=doc.get("tries", 0),
        attempts=tuple(
            Delivery(as_utc(a["at"]), a.get("http_status"), a["latency_ms"], a.get("error"))
            for a in doc.get("attempts", ())
        ),
        delivered_at=opt_dt(doc.get("delivered_at")),
        lease_until=opt_dt(doc.get("lease_until")),
        endpoint=doc.get("endpoint"),
    )


# -- production controls: provider guards, owed events, audit, invites, card holds ------------


def provider_guard(
    p: Provider,
    *,
    key: bool = False,
    secrets: bool = False,
    card: bool = False,
    endpoint: bool = False,
) -> dict[str, Any]:
    """The compare of a provider's compare-and-set: the fields about to change are still as
    ``p`` (what the caller read) has them. A secret rotation compares the newest secret's id
    (each rotation puts a fresh one first), a card change the sealed number's nonce (random
    for each sealing)."""
    query: dict[str, Any] = {"_id": p.name}
    if key:
        query["key_hash"] = p.key_hash
    if secrets:
        query["secrets.0.sid"] = p.secrets[0].secret_id if p.secrets else None
    if card:
        query["card.pan.n"] = p.card.pan.nonce
    if endpoint:
        query["endpoint"] = p.endpoint
    return query


def suspended_doc(at: datetime, reason: str) -> dict[str, Any]:
    return {"at": at, "reason": reason}


def owed_event_doc(e: OwedEvent) -> dict[str, Any]:
    return {"id": e.event_id, "endpoint": e.endpoint, "body": e.body, "created_at": e.created_at}


def owed_events_from_doc(doc: Mapping[str, Any]) -> list[OwedEvent]:
    return [
        OwedEvent(o["id"], o["endpoint"], o["body"], as_utc(o["created_at"]))
        for o in doc.get("owed_events") or ()
    ]


def audit_doc(e: AuditEntry) -> dict[str, Any]:
    return {
        "_id": e.entry_id,
        "provider": e.provider,
        "created_at": e.at,
        "actor": e.actor,
        "address": e.address,
        "action": e.action,
        "changes": e.changes,
    }


def audit_from_doc(doc: Mapping[str, Any]) -> AuditEntry:
    return AuditEntry(
        entry_id=doc["_id"],
        provider=doc.get("provider"),
        at=as_utc(doc["created_at"]),
        actor=doc["actor"],
        address=doc.get("address"),
        action=doc["action"],
        changes=dict(doc.get("changes") or {}),
    )


def invite_doc(i: Invite) -> dict[str, Any]:
    return {
        "_id": i.code_hash,
        "note": i.note,
        "created_at": i.created_at,
        "expires_at": i.expires_at,
        "used_by": i.used_by,
        "used_at": i.used_at,
    }


def invite_from_doc(doc: Mapping[str, Any]) -> Invite:
    return Invite(
        code_hash=doc["_id"],
        note=doc.get("note"),
        created_at=as_utc(doc["created_at"]),
        expires_at=as_utc(doc["expires_at"]),
        used_by=doc.get("used_by"),
        used_at=opt_dt(doc.get("used_at")),
    )


def hold_doc(h: CardHold) -> dict[str, Any]:
    return {
        "_id": h.hold_id,
        "claim": h.claim,
        "day": h.day,
        "amount": h.amount,
        "to": h.to_card,
        "from": h.from_card,
        "created_at": h.created_at,
        "released": h.released,
    }


def hold_from_doc(doc: Mapping[str, Any]) -> CardHold:
    return CardHold(
        hold_id=doc["_id"],
        claim=doc["claim"],
        day=doc["day"],
        amount=doc["amount"],
        to_card=doc["to"],
        from_card=doc["from"],
        created_at=as_utc(doc["created_at"]),
        released=bool(doc.get("released")),
    )
