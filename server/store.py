"""Everything that talks to MongoDB. No other module imports the driver.

Keeping every query here means each one has an index next to it (``INDEXES``) and the driver
(motor today, ``pymongo.AsyncMongoClient`` tomorrow) can be swapped in one file.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pymongo
from motor.motor_asyncio import AsyncIOMotorClient, AsyncIOMotorDatabase
from pymongo import ASCENDING, DESCENDING
from pymongo.errors import BulkWriteError, DuplicateKeyError, OperationFailure, PyMongoError

from server.crypto import Sealed
from server.models import (
    Attempt,
    AttemptOutcome,
    Claim,
    ClaimStatus,
    Delivery,
    EventStatus,
    PageRequest,
    Provider,
    SealedCard,
    SystemFigures,
    WebhookEvent,
    WebhookSecret,
    as_utc,
    encode_cursor,
)

# (collection, keys, options): one entry for every query this module makes.
INDEXES: tuple[tuple[str, list[tuple[str, int]], dict[str, Any]], ...] = (
    ("providers", [("key_hash", ASCENDING)], {"unique": True, "name": "key_hash_unique"}),
    (
        "claims",
        [("provider", ASCENDING), ("ref", ASCENDING)],
        {"unique": True, "name": "provider_ref_unique"},
    ),
    (
        "claims",
        [("provider", ASCENDING), ("created_at", DESCENDING), ("_id", DESCENDING)],
        {"name": "provider_newest"},
    ),
    (
        "claims",
        [
            ("provider", ASCENDING),
            ("status", ASCENDING),
            ("created_at", DESCENDING),
            ("_id", DESCENDING),
        ],
        {"name": "provider_status_newest"},
    ),
    ("claims", [("status", ASCENDING), ("expires_at", ASCENDING)], {"name": "status_expiry"}),
    ("claims", [("status", ASCENDING), ("lease_until", ASCENDING)], {"name": "status_lease"}),
    ("claims", [("notify", ASCENDING)], {"name": "notify"}),
    (
        "claims",
        [("status", ASCENDING), ("attempts.outcome", ASCENDING)],
        {"name": "status_attempt_outcome"},
    ),
    ("events", [("status", ASCENDING), ("next_attempt_at", ASCENDING)], {"name": "due"}),
    ("events", [("status", ASCENDING), ("created_at", ASCENDING)], {"name": "oldest"}),
    (
        "events",
        [("provider", ASCENDING), ("created_at", DESCENDING), ("_id", DESCENDING)],
        {"name": "provider_newest"},
    ),
    (
        "events",
        [
            ("provider", ASCENDING),
            ("status", ASCENDING),
            ("created_at", DESCENDING),
            ("_id", DESCENDING),
        ],
        {"name": "provider_status_newest"},
    ),
)


DUPLICATE_KEY = 11000


class Duplicate(Exception):
    """A unique index refused the write."""


@dataclass(frozen=True)
class SealedField:
    """Where one sealed value lives, and the associated-data name it was sealed under."""

    collection: str
    doc_id: str
    path: str
    aad_field: str
    value: Sealed


@dataclass(frozen=True)
class Settlement:
    """How one attempt ended and what that makes of its claim, applied in one atomic update."""

    outcome: AttemptOutcome
    status: ClaimStatus
    at: datetime
    code: int | None = None
    message: str | None = None
    reference: str | None = None
    lease_until: datetime | None = None
    next_attempt: Attempt | None = None  # started in the same update


def _attempt_doc(a: Attempt) -> dict[str, Any]:
    return {
        "tran_uuid": a.tran_uuid,
        "started_at": a.started_at,
        "card_last4": a.card_last4,
        "outcome": str(a.outcome),
        "code": a.code,
        "message": a.message,
        "finished_at": a.finished_at,
    }


@dataclass(frozen=True)
class Page:
    claims: list[Claim]
    next_cursor: str | None


def _sealed_doc(value: Sealed) -> dict[str, Any]:
    return value.to_doc()


def _provider_from_doc(doc: Mapping[str, Any]) -> Provider:
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
                expires_at=as_utc(s["expires_at"]) if s.get("expires_at") else None,
            )
            for s in doc["secrets"]
        ),
        created_at=as_utc(doc["created_at"]),
        updated_at=as_utc(doc["updated_at"]),
    )


def _card_doc(card: SealedCard) -> dict[str, Any]:
    return {
        "pan": _sealed_doc(card.pan),
        "exp": _sealed_doc(card.exp_date),
        "ipin": _sealed_doc(card.ipin),
        "last4": card.last4,
    }


def _secrets_doc(secrets: tuple[WebhookSecret, ...]) -> list[dict[str, Any]]:
    return [
        {
            "sid": s.secret_id,
            "secret": _sealed_doc(s.secret),
            "created_at": s.created_at,
            "expires_at": s.expires_at,
        }
        for s in secrets
    ]


def _provider_doc(p: Provider) -> dict[str, Any]:
    return {
        "_id": p.name,
        "key_hash": p.key_hash,
        "card": _card_doc(p.card),
        "endpoint": p.endpoint,
        "secrets": _secrets_doc(p.secrets),
        "created_at": p.created_at,
        "updated_at": p.updated_at,
    }


def _opt_dt(value: datetime | None) -> datetime | None:
    return as_utc(value) if value else None


def _claim_from_doc(doc: Mapping[str, Any]) -> Claim:
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
        claimed_at=_opt_dt(doc.get("claimed_at")),
        completed_at=_opt_dt(doc.get("completed_at")),
        card_last4=card.get("last4"),
        card_pan=Sealed.from_doc(card["pan"]) if card.get("pan") else None,
        response_code=doc.get("response_code"),
        response_message=doc.get("response_message"),
        reference=doc.get("reference"),
        lease_until=_opt_dt(doc.get("lease_until")),
        attempts=tuple(
            Attempt(
                tran_uuid=a["tran_uuid"],
                started_at=as_utc(a["started_at"]),
                card_last4=a["card_last4"],
                outcome=AttemptOutcome(a["outcome"]),
                code=a.get("code"),
                message=a.get("message"),
                finished_at=_opt_dt(a.get("finished_at")),
            )
            for a in doc.get("attempts", ())
        ),
    )


def _claim_doc(c: Claim) -> dict[str, Any]:
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
    }


def _event_doc(e: WebhookEvent) -> dict[str, Any]:
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
        "lease_until": e.created_at,
    }


def _event_from_doc(doc: Mapping[str, Any]) -> WebhookEvent:
    return WebhookEvent(
        event_id=doc["_id"],
        provider=doc["provider"],
        claim=doc.get("claim"),
        body=doc["body"],
        status=EventStatus(doc["status"]),
        created_at=as_utc(doc["created_at"]),
        next_attempt_at=_opt_dt(doc.get("next_attempt_at")),
        tries=doc.get("tries", 0),
        attempts=tuple(
            Delivery(as_utc(a["at"]), a.get("http_status"), a["latency_ms"], a.get("error"))
            for a in doc.get("attempts", ())
        ),
        delivered_at=_opt_dt(doc.get("delivered_at")),
        lease_until=_opt_dt(doc.get("lease_until")),
    )


class Store:
    """The service's MongoDB database; ``is_unavailable`` tells outages from bugs."""

    def __init__(self, uri: str, db_name: str, timeout_ms: int = 5000):
        self.client: AsyncIOMotorClient = AsyncIOMotorClient(
            uri,
            serverSelectionTimeoutMS=timeout_ms,
            connectTimeoutMS=timeout_ms,
            socketTimeoutMS=max(timeout_ms * 2, 10_000),
            tz_aware=True,
            retryWrites=True,
        )
        self.db: AsyncIOMotorDatabase = self.client[db_name]

    def close(self) -> None:
        self.client.close()

    async def _cas(
        self, collection: str, query: dict[str, Any], update: dict[str, Any]
    ) -> Mapping[str, Any] | None:
        """Compare-and-set one document (``query`` names its ``_id``) and read it back.

        ``update_one`` decides atomically; the read-back shows this write or a later one.
        Not ``find_one_and_update``: the embedded server answers it by scanning the whole
        collection (about 30 ms at 6,000 claims), while ``update_one`` uses the index.
        """
        result = await self.db[collection].update_one(query, update)
        if result.matched_count != 1:
            return None
        return await self.db[collection].find_one({"_id": query["_id"]})

    async def ping(self) -> bool:
        try:
            await self.db.command("ping")
            return True
        except PyMongoError:
            return False

    async def create_indexes(self) -> None:
        for collection, keys, options in INDEXES:
            await self.db[collection].create_index(keys, **options)

    # -- providers -------------------------------------------------------------------------

    async def insert_provider(self, provider: Provider) -> None:
        try:
            await self.db.providers.insert_one(_provider_doc(provider))
        except DuplicateKeyError as exc:
            raise Duplicate(provider.name) from exc

    async def provider(self, name: str) -> Provider | None:
        doc = await self.db.providers.find_one({"_id": name})
        return _provider_from_doc(doc) if doc else None

    async def providers_by_key_hash(self, key_hashes: Sequence[str]) -> dict[str, Provider]:
        """The providers owning any of these key hashes, in one round trip."""
        wanted = list(dict.fromkeys(key_hashes))
        query = {"key_hash": wanted[0] if len(wanted) == 1 else {"$in": wanted}}
        return {
            doc["key_hash"]: _provider_from_doc(doc) async for doc in self.db.providers.find(query)
        }

    async def update_provider(
        self,
        name: str,
        *,
        updated_at: datetime,
        endpoint: str | None = None,
        card: SealedCard | None = None,
        key_hash: str | None = None,
        secrets: tuple[WebhookSecret, ...] | None = None,
    ) -> Provider | None:
        changes: dict[str, Any] = {"updated_at": updated_at}
        if endpoint is not None:
            changes["endpoint"] = endpoint
        if card is not None:
            changes["card"] = _card_doc(card)
        if key_hash is not None:
            changes["key_hash"] = key_hash
        if secrets is not None:
            changes["secrets"] = _secrets_doc(secrets)
        doc = await self._cas("providers", {"_id": name}, {"$set": changes})
        return _provider_from_doc(doc) if doc else None

    # -- daily totals ----------------------------------------------------------------------

    async def reserve_daily(self, provider: str, day: str, amount: int, limit: int) -> bool:
        """Atomically add ``amount`` to the day's total unless that would pass ``limit``.

        ``update_one`` rather than ``find_one_and_update``: its counts are what decide, and
        the embedded server can answer a racing upsert with no document although it applied.
        """
        if amount > limit:  # the upsert below would create the day already over the limit
            return False
        query = {"_id": f"{provider}:{day}", "total": {"$lte": limit - amount}}
        update = {"$inc": {"total": amount}, "$setOnInsert": {"provider": provider, "day": day}}
        try:
            result = await self.db.daily_totals.update_one(query, update, upsert=True)
        except DuplicateKeyError:
            # Either the day's document is too full to match, or a concurrent first
            # reservation created it under us; now that it exists, a plain update decides.
            result = await self.db.daily_totals.update_one(query, update)
        return result.modified_count == 1 or result.upserted_id is not None

    async def release_daily(self, provider: str, day: str, amount: int) -> None:
        if amount == 0:
            return
        await self.db.daily_totals.update_one(
            {"_id": f"{provider}:{day}"}, {"$inc": {"total": -amount}}
        )

    async def daily_total(self, provider: str, day: str) -> int:
        doc = await self.db.daily_totals.find_one({"_id": f"{provider}:{day}"})
        return int(doc["total"]) if doc else 0

    # -- claims ----------------------------------------------------------------------------

    async def insert_claims(self, claims: Sequence[Claim]) -> list[Exception | None]:
        """Insert many claims in one round trip: per claim, None, ``Duplicate`` or the error.

        Unordered, so one refused claim does not stop the others being written.
        """
        if not claims:
            return []
        try:
            await self.db.claims.insert_many([_claim_doc(c) for c in claims], ordered=False)
        except BulkWriteError as exc:
            errors = {e["index"]: e for e in exc.details.get("writeErrors", [])}
            if exc.details.get("writeConcernErrors"):
                raise
            results: list[Exception | None] = []
            for index, claim in enumerate(claims):
                error = errors.get(index)
                if error is None:
                    results.append(None)
                elif error.get("code") == DUPLICATE_KEY:
                    results.append(Duplicate(claim.ref))
                else:
                    results.append(
                        OperationFailure(error.get("errmsg", "write error"), error.get("code"))
                    )
            return results
        return [None] * len(claims)

    async def claim(self, provider: str, uuid: str) -> Claim | None:
        doc = await self.db.claims.find_one({"_id": uuid, "provider": provider})
        return _claim_from_doc(doc) if doc else None

    async def claim_by_ref(self, provider: str, ref: str) -> Claim | None:
        doc = await self.db.claims.find_one({"provider": provider, "ref": ref})
        return _claim_from_doc(doc) if doc else None

    async def _newest_first(
        self, collection: str, provider: str, request: PageRequest
    ) -> tuple[list[Mapping[str, Any]], str | None]:
        """One page of a provider's documents, newest first, and the cursor to the next."""
        query: dict[str, Any] = {"provider": provider}
        if request.status:
            query["status"] = request.status
        if request.after:
            created, key = request.after
            query["$or"] = [
                {"created_at": {"$lt": created}},
                {"created_at": created, "_id": {"$lt": key}},
            ]
        cursor = (
            self.db[collection]
            .find(query)
            .sort([("created_at", DESCENDING), ("_id", DESCENDING)])
            .limit(request.limit + 1)
        )
        docs = [d async for d in cursor]
        if len(docs) <= request.limit:
            return docs, None
        last = docs[request.limit - 1]
        return docs[: request.limit], encode_cursor(as_utc(last["created_at"]), last["_id"])

    async def list_claims(self, provider: str, request: PageRequest) -> Page:
        docs, next_cursor = await self._newest_first("claims", provider, request)
        return Page([_claim_from_doc(d) for d in docs], next_cursor)

    async def cancel_claim(self, provider: str, uuid: str, now: datetime) -> Claim | None:
        """Compare-and-set pending -> cancelled; None when the claim was not pending."""
        doc = await self._cas(
            "claims",
            {"_id": uuid, "provider": provider, "status": str(ClaimStatus.PENDING)},
            {"$set": {"status": str(ClaimStatus.CANCELLED), "completed_at": now}},
        )
        return _claim_from_doc(doc) if doc else None

    # -- payouts ---------------------------------------------------------------------------

    async def begin_attempt(
        self,
        provider: str,
        uuid: str,
        *,
        card: Sealed,
        attempt: Attempt,
        lease_until: datetime,
        max_attempts: int,
    ) -> Claim | None:
        """Compare-and-set pending -> processing, storing the card and the attempt (with its
        gateway UUID) in the same write; None when another submission won or it is too late."""
        now = attempt.started_at
        doc = await self._cas(
            "claims",
            {
                "_id": uuid,
                "provider": provider,
                "status": str(ClaimStatus.PENDING),
                "expires_at": {"$gt": now},
                f"attempts.{max_attempts - 1}": {"$exists": False},
            },
            {
                "$set": {
                    "status": str(ClaimStatus.PROCESSING),
                    "card.pan": _sealed_doc(card),
                    "card.last4": attempt.card_last4,
                    "lease_until": lease_until,
                },
                "$min": {"claimed_at": now},
                "$push": {"attempts": _attempt_doc(attempt)},
            },
        )
        return _claim_from_doc(doc) if doc else None

    async def settle(self, uuid: str, index: int, tran_uuid: str, s: Settlement) -> Claim | None:
        """Record an attempt's outcome and the claim's next state, only if that attempt is
        still open; None when someone else settled it first."""
        at = f"attempts.{index}"
        changes: dict[str, Any] = {
            "status": str(s.status),
            f"{at}.outcome": str(s.outcome),
            f"{at}.code": s.code,
            f"{at}.message": s.message,
            "lease_until": s.lease_until,
        }
        if s.outcome is not AttemptOutcome.UNKNOWN:
            changes[f"{at}.finished_at"] = s.at
        if s.status is not ClaimStatus.PROCESSING or s.outcome is not AttemptOutcome.UNKNOWN:
            changes["response_code"] = s.code
            changes["response_message"] = s.message
        if s.status.terminal:
            changes["completed_at"] = s.at
            changes["notify"] = True  # the outbox event is owed; cleared once written
        if s.reference:
            changes["reference"] = s.reference
        if s.next_attempt is not None:
            changes[f"attempts.{index + 1}"] = _attempt_doc(s.next_attempt)
        update: dict[str, Any] = {"$set": changes}
        if s.status is not ClaimStatus.PROCESSING:
            update["$unset"] = {"card.pan": ""}  # keep the customer's card no longer than needed
        doc = await self._cas(
            "claims",
            {
                "_id": uuid,
                "status": str(ClaimStatus.PROCESSING),
                f"{at}.tran_uuid": tran_uuid,
                f"{at}.outcome": {
                    "$in": [str(AttemptOutcome.IN_FLIGHT), str(AttemptOutcome.UNKNOWN)]
                },
            },
            update,
        )
        return _claim_from_doc(doc) if doc else None

    async def claim_any(self, uuid: str) -> Claim | None:
        doc = await self.db.claims.find_one({"_id": uuid})
        return _claim_from_doc(doc) if doc else None

    async def due_for_reconcile(
        self, now: datetime, limit: int, include_unknown: bool = False
    ) -> list[Claim]:
        """Processing claims whose lease ran out; with ``include_unknown`` also those whose
        attempt already came back unknown (an operator asking to settle them now)."""
        query: dict[str, Any] = {
            "status": str(ClaimStatus.PROCESSING),
            "lease_until": {"$lte": now},
        }
        if include_unknown:
            query = {
                "status": str(ClaimStatus.PROCESSING),
                "$or": [
                    {"lease_until": {"$lte": now}},
                    {"attempts.outcome": str(AttemptOutcome.UNKNOWN)},
                ],
            }
        cursor = self.db.claims.find(query).sort("lease_until", ASCENDING).limit(limit)
        return [_claim_from_doc(d) async for d in cursor]

    async def take_lease(self, claim: Claim, until: datetime) -> Claim | None:
        """Compare-and-set the claim's lease, so one process at a time settles it."""
        doc = await self._cas(
            "claims",
            {
                "_id": claim.uuid,
                "status": str(ClaimStatus.PROCESSING),
                "lease_until": claim.lease_until,
            },
            {"$set": {"lease_until": until}},
        )
        return _claim_from_doc(doc) if doc else None

    async def renew_lease(self, claim: Claim, until: datetime) -> bool:
        """``take_lease`` in one round trip, for a live call about to send its attempt:
        whether no one took the lease since ``claim`` was read."""
        result = await self.db.claims.update_one(
            {
                "_id": claim.uuid,
                "status": str(ClaimStatus.PROCESSING),
                "lease_until": claim.lease_until,
            },
            {"$set": {"lease_until": until}},
        )
        return result.matched_count == 1

    async def overdue_pending(self, now: datetime, limit: int) -> list[str]:
        cursor = (
            self.db.claims.find(
                {"status": str(ClaimStatus.PENDING), "expires_at": {"$lte": now}}, {"_id": 1}
            )
            .sort("expires_at", ASCENDING)
            .limit(limit)
        )
        return [d["_id"] async for d in cursor]

    async def expire_claim(self, uuid: str, now: datetime) -> Claim | None:
        doc = await self._cas(
            "claims",
            {"_id": uuid, "status": str(ClaimStatus.PENDING), "expires_at": {"$lte": now}},
            {
                "$set": {"status": str(ClaimStatus.EXPIRED), "completed_at": now, "notify": True},
                "$unset": {"card.pan": ""},
            },
        )
        return _claim_from_doc(doc) if doc else None

    async def acquire_lease(self, name: str, holder: str, now: datetime, until: datetime) -> bool:
        """A named lease shared by every server process (e.g. who reconciles now)."""
        query = {"_id": name, "$or": [{"until": {"$lte": now}}, {"holder": holder}]}
        update = {"$set": {"holder": holder, "until": until}}
        try:
            result = await self.db.leases.update_one(query, update, upsert=True)
        except DuplicateKeyError:
            return False  # held by another process
        return result.modified_count == 1 or result.upserted_id is not None

    # -- webhook outbox ----------------------------------------------------------------------

    async def claims_owed_an_event(self, limit: int) -> list[Claim]:
        cursor = self.db.claims.find({"notify": True}).limit(limit)
        return [_claim_from_doc(d) async for d in cursor]

    async def insert_event(self, event: WebhookEvent) -> bool:
        """False when the event already exists (its id is derived from the claim)."""
        try:
            await self.db.events.insert_one(_event_doc(event))
        except DuplicateKeyError:
            return False
        return True

    async def event_written(self, claim_uuid: str) -> None:
        await self.db.claims.update_one({"_id": claim_uuid}, {"$unset": {"notify": ""}})

    async def due_events(self, now: datetime, limit: int) -> list[tuple[str, str]]:
        """(event id, provider) of pending events whose next attempt is due."""
        cursor = (
            self.db.events.find(
                {"status": str(EventStatus.PENDING), "next_attempt_at": {"$lte": now}},
                {"provider": 1},
            )
            .sort("next_attempt_at", ASCENDING)
            .limit(limit)
        )
        return [(d["_id"], d["provider"]) async for d in cursor]

    async def take_event(
        self, event_id: str, now: datetime, until: datetime
    ) -> WebhookEvent | None:
        """Lease a due event so that no other process sends this attempt."""
        doc = await self._cas(
            "events",
            {
                "_id": event_id,
                "status": str(EventStatus.PENDING),
                "next_attempt_at": {"$lte": now},
                "lease_until": {"$lte": now},
            },
            {"$set": {"lease_until": until}},
        )
        return _event_from_doc(doc) if doc else None

    async def record_delivery(
        self,
        event: WebhookEvent,
        attempt: Delivery,
        status: EventStatus,
        next_attempt_at: datetime | None,
    ) -> bool:
        """Append the attempt and move the event on, only while we still hold its lease."""
        changes: dict[str, Any] = {
            "status": str(status),
            "next_attempt_at": next_attempt_at,
            "tries": event.tries + 1,
            "lease_until": attempt.at,
        }
        if status is EventStatus.DELIVERED:
            changes["delivered_at"] = attempt.at
        result = await self.db.events.update_one(
            {"_id": event.event_id, "lease_until": event.lease_until},
            {
                "$set": changes,
                "$push": {
                    "attempts": {
                        "at": attempt.at,
                        "http_status": attempt.http_status,
                        "latency_ms": attempt.latency_ms,
                        "error": attempt.error,
                    }
                },
            },
        )
        return result.modified_count == 1

    async def event(self, provider: str, event_id: str) -> WebhookEvent | None:
        doc = await self.db.events.find_one({"_id": event_id, "provider": provider})
        return _event_from_doc(doc) if doc else None

    async def list_events(
        self, provider: str, request: PageRequest
    ) -> tuple[list[WebhookEvent], str | None]:
        docs, next_cursor = await self._newest_first("events", provider, request)
        return [_event_from_doc(d) for d in docs], next_cursor

    async def redeliver(self, provider: str, event_id: str, now: datetime) -> WebhookEvent | None:
        """Start a new round of attempts (the history is kept)."""
        doc = await self._cas(
            "events",
            {"_id": event_id, "provider": provider},
            {"$set": {"status": str(EventStatus.PENDING), "next_attempt_at": now, "tries": 0}},
        )
        return _event_from_doc(doc) if doc else None

    # -- figures for metrics and operators ---------------------------------------------------

    async def figures(self, now: datetime) -> SystemFigures:
        claims = {
            s.value: await self.db.claims.count_documents({"status": s.value}) for s in ClaimStatus
        }
        backlog = await self.db.claims.count_documents(
            {"status": str(ClaimStatus.PROCESSING), "lease_until": {"$lte": now}}
        )
        events = {
            s.value: await self.db.events.count_documents({"status": s.value}) for s in EventStatus
        }
        oldest = await self.db.events.find_one(
            {"status": str(EventStatus.PENDING)}, sort=[("created_at", ASCENDING)]
        )
        lag = (now - as_utc(oldest["created_at"])).total_seconds() if oldest else 0.0
        return SystemFigures(claims, backlog, events, max(lag, 0.0))

    async def providers(self) -> list[Provider]:
        return [_provider_from_doc(d) async for d in self.db.providers.find().sort("_id")]

    async def redeliver_matching(
        self,
        now: datetime,
        *,
        event_id: str | None,
        provider: str | None,
        since: datetime | None,
        until: datetime | None,
        status: str | None,
    ) -> int:
        """Start a new round for every matching event (an operator's bulk redelivery)."""
        query: dict[str, Any] = {}
        if event_id:
            query["_id"] = event_id
        if provider:
            query["provider"] = provider
        if status:
            query["status"] = status
        if since or until:
            query["created_at"] = {k: v for k, v in (("$gte", since), ("$lt", until)) if v}
        result = await self.db.events.update_many(
            query,
            {"$set": {"status": str(EventStatus.PENDING), "next_attempt_at": now, "tries": 0}},
        )
        return result.modified_count

    # -- key rotation ----------------------------------------------------------------------

    async def sealed_fields(self, not_kid: str) -> AsyncIterator[SealedField]:
        """Every sealed value not sealed by key ``not_kid``, wherever it is stored."""
        providers = self.db.providers.find(
            {
                "$or": [
                    {"card.pan.kid": {"$ne": not_kid}},
                    {"card.exp.kid": {"$ne": not_kid}},
                    {"card.ipin.kid": {"$ne": not_kid}},
                    {"secrets.secret.kid": {"$ne": not_kid}},
                ]
            }
        )
        async for doc in providers:
            for part in ("pan", "exp", "ipin"):
                yield SealedField(
                    "providers",
                    doc["_id"],
                    f"card.{part}",
                    f"card.{part}",
                    Sealed.from_doc(doc["card"][part]),
                )
            for i, secret in enumerate(doc["secrets"]):
                yield SealedField(
                    "providers",
                    doc["_id"],
                    f"secrets.{i}.secret",
                    f"secrets.{secret['sid']}",
                    Sealed.from_doc(secret["secret"]),
                )
        claims = self.db.claims.find(
            {"card.pan": {"$exists": True}, "card.pan.kid": {"$ne": not_kid}}
        )
        async for doc in claims:
            yield SealedField(
                "claims", doc["_id"], "card.pan", "card.pan", Sealed.from_doc(doc["card"]["pan"])
            )

    async def swap_sealed(self, field: SealedField, new: Sealed) -> bool:
        """Replace one sealed value only if it is still the one we read."""
        result = await self.db[field.collection].update_one(
            {"_id": field.doc_id, field.path: _sealed_doc(field.value)},
            {"$set": {field.path: _sealed_doc(new)}},
        )
        return result.modified_count == 1


def is_unavailable(exc: BaseException) -> bool:
    """Errors that mean "the database is not answering" rather than a bug."""
    return isinstance(
        exc,
        (
            pymongo.errors.ServerSelectionTimeoutError,
            pymongo.errors.NetworkTimeout,
            pymongo.errors.AutoReconnect,
            pymongo.errors.ConnectionFailure,
            pymongo.errors.ExecutionTimeout,
        ),
    )
