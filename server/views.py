"""What each audience may see of a record, in one place: the provider's API views, the
customer's view of a claim and the generate answer.

Cards appear only as ``mask_pan`` makes them (last four digits); secrets never appear.
"""

from __future__ import annotations

import json
from typing import Any

from gateways.base import mask_pan
from server.crypto import key_id
from server.lifecycle import attempts_left
from server.models import (
    Attempt,
    AuditEntry,
    Claim,
    ClaimStatus,
    Delivery,
    Provider,
    WebhookEvent,
    rfc3339,
    utcnow,
)


def masked(last4: str | None) -> str | None:
    return mask_pan(last4) if last4 else None


def attempt_view(a: Attempt) -> dict[str, Any]:
    return {
        "tran_uuid": a.tran_uuid,
        "started_at": rfc3339(a.started_at),
        "finished_at": rfc3339(a.finished_at),
        "card": masked(a.card_last4),
        "outcome": str(a.outcome),
        "code": a.code,
        "message": a.message,
    }


def claim_view(claim: Claim) -> dict[str, Any]:
    """The provider's view of a claim."""
    return {
        "uuid": claim.uuid,
        "id": claim.ref,
        "amount": claim.amount,
        "status": str(claim.status),
        "created_at": rfc3339(claim.created_at),
        "expires_at": rfc3339(claim.expires_at),
        "claimed_at": rfc3339(claim.claimed_at),
        "completed_at": rfc3339(claim.completed_at),
        "card": masked(claim.card_last4),
        "response_code": claim.response_code,
        "response_message": claim.response_message,
        "reference": claim.reference,
        "attempts": [attempt_view(a) for a in claim.attempts],
    }


def generated_view(claim: Claim, url: str) -> dict[str, Any]:
    """The generate answer; built only from fields that never change, so a replay of the
    same request gets the very same body."""
    return {
        "result": claim.uuid,
        "uuid": claim.uuid,
        "url": url,
        "expires_at": rfc3339(claim.expires_at),
        "id": claim.ref,
        "amount": claim.amount,
    }


def customer_view(claim: Claim) -> dict[str, Any]:
    """What the customer (or the provider's app) may see of a claim."""
    return {
        "uuid": claim.uuid,
        "provider": claim.provider,
        "amount": claim.amount,
        "status": str(claim.status),
        "card": masked(claim.card_last4),
        "response_code": claim.response_code,
        "response_message": claim.response_message,
        "reference": claim.reference,
        "completed_at": rfc3339(claim.completed_at),
        "expires_at": rfc3339(claim.expires_at),
    }


def claim_attempts_left(claim: Claim) -> int:
    return attempts_left(len(claim.attempts))


def provider_view(p: Provider) -> dict[str, Any]:
    """What the provider may see of itself: nothing secret, the card masked."""
    return {
        "name": p.name,
        "display_name": p.display_name,
        "support": p.support,
        "endpoint": p.endpoint,
        "card": masked(p.card.last4),
        "created_at": rfc3339(p.created_at),
        "updated_at": rfc3339(p.updated_at),
        "key_id": key_id(p.key_hash),
        "status": "suspended" if p.suspended else "active",
        "suspended_at": rfc3339(p.suspended_at),
        "suspended_reason": p.suspended_reason,
        "webhook_secrets": [
            {
                "id": s.secret_id,
                "created_at": rfc3339(s.created_at),
                "expires_at": rfc3339(s.expires_at),
            }
            for s in p.secrets
        ],
        **endpoint_health_view(p),
    }


def endpoint_health_view(p: Provider) -> dict[str, Any]:
    """Whether webhooks are being sent, and if not since when and why."""
    return {
        "endpoint_status": "enabled" if p.endpoint_enabled else "disabled",
        "endpoint_disabled_at": rfc3339(p.endpoint_disabled_at),
        "endpoint_disabled_reason": p.endpoint_disabled_reason,
        "endpoint_failing_since": rfc3339(p.endpoint_failing_since),
    }


def delivery_view(d: Delivery) -> dict[str, Any]:
    return {
        "at": rfc3339(d.at),
        "http_status": d.http_status,
        "latency_ms": d.latency_ms,
        "error": d.error,
    }


def event_view(e: WebhookEvent) -> dict[str, Any]:
    return {
        "id": e.event_id,
        "claim": e.claim,
        "status": str(e.status),
        "created_at": rfc3339(e.created_at),
        "delivered_at": rfc3339(e.delivered_at),
        "next_attempt_at": rfc3339(e.next_attempt_at),
        "attempts": [delivery_view(a) for a in e.attempts],
        "payload": json.loads(e.body),
    }


def webhook_payload(claim: Claim) -> dict[str, Any]:
    """The noebs body, extended with the provider's id, the claim uuid and its status."""
    if claim.status is ClaimStatus.EXPIRED:
        response = "Expired"
    else:
        response = claim.response_message or str(claim.status).capitalize()
    return {
        "name": claim.provider,
        "id": claim.ref,
        "uuid": claim.uuid,
        "status": str(claim.status),
        "details": {
            "response": response,
            "code": claim.response_code,
            "time": rfc3339(claim.completed_at or utcnow()),
            "amount": claim.amount if claim.status is ClaimStatus.SUCCEEDED else 0,
        },
    }


def audit_view(e: AuditEntry) -> dict[str, Any]:
    """An audit entry as the provider (and the operator) sees it; it holds nothing secret."""
    return {
        "id": e.entry_id,
        "at": rfc3339(e.at),
        "actor": e.actor,
        "address": e.address,
        "action": e.action,
        "changes": e.changes,
    }
