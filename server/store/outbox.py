"""The webhook outbox: one document per event, ``_id`` the event id (derived from the
claim, so a second insert of a claim's event is refused)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pymongo import ASCENDING, UpdateOne
from pymongo.errors import BulkWriteError, DuplicateKeyError

from server.models import Delivery, EventStatus, PageRequest, WebhookEvent
from server.store.base import DUPLICATE_KEY, Coll, cas, newest_first, speaks_our_errors
from server.store.codecs import delivery_doc, event_doc, event_from_doc

PENDING = str(EventStatus.PENDING)


@dataclass(frozen=True)
class Recorded:
    """One delivery attempt to write to the event's log, and what it makes of the event."""

    event: WebhookEvent
    attempt: Delivery
    status: EventStatus
    next_attempt_at: datetime | None


def _record_update(r: Recorded) -> UpdateOne:
    """Append the attempt and move the event on, only while its lease is still ours."""
    changes: dict[str, Any] = {
        "status": str(r.status),
        "next_attempt_at": r.next_attempt_at,
        "tries": r.event.tries + 1,
        "lease_until": r.attempt.at,
    }
    if r.status is EventStatus.DELIVERED:
        changes["delivered_at"] = r.attempt.at
    return UpdateOne(
        {"_id": r.event.event_id, "lease_until": r.event.lease_until},
        {"$set": changes, "$push": {"attempts": delivery_doc(r.attempt)}},
    )


@speaks_our_errors
class EventStore:
    def __init__(self, coll: Coll) -> None:
        self.coll = coll

    async def insert(self, event: WebhookEvent) -> bool:
        """False when the event already exists."""
        try:
            await self.coll.insert_one(event_doc(event))
        except DuplicateKeyError:
            return False
        return True

    async def insert_many(self, events: Sequence[WebhookEvent]) -> list[bool]:
        """``insert`` for many events in one round trip: per event, whether this call wrote
        it (False: it existed already)."""
        if not events:
            return []
        try:
            await self.coll.insert_many([event_doc(e) for e in events], ordered=False)
        except BulkWriteError as exc:
            if exc.details.get("writeConcernErrors"):
                raise
            errors = exc.details.get("writeErrors", [])
            if any(e.get("code") != DUPLICATE_KEY for e in errors):
                raise
            refused = {e["index"] for e in errors}
            return [i not in refused for i in range(len(events))]
        return [True] * len(events)

    async def due(self, now: datetime, limit: int) -> list[tuple[str, str]]:
        """(event id, provider) of pending events whose next attempt is due."""
        cursor = (
            self.coll.find({"status": PENDING, "next_attempt_at": {"$lte": now}}, {"provider": 1})
            .sort("next_attempt_at", ASCENDING)
            .limit(limit)
        )
        return [(d["_id"], d["provider"]) async for d in cursor]

    async def take(self, event_id: str, now: datetime, until: datetime) -> WebhookEvent | None:
        """Lease a due event so that no other process sends this attempt."""
        doc = await cas(
            self.coll,
            {
                "_id": event_id,
                "status": PENDING,
                "next_attempt_at": {"$lte": now},
                "lease_until": {"$lte": now},
            },
            {"$set": {"lease_until": until}},
        )
        return event_from_doc(doc) if doc else None

    async def record_many(self, records: Sequence[Recorded]) -> int:
        """Write many delivery attempts in one round trip; how many were still ours."""
        if not records:
            return 0
        result = await self.coll.bulk_write([_record_update(r) for r in records], ordered=False)
        return result.modified_count

    async def due_except(
        self, now: datetime, limit: int, providers: list[str]
    ) -> list[tuple[str, str]]:
        """Like ``due``, leaving out these providers' events (they have enough queued
        already), so one provider's backlog cannot crowd the others out of a sweep."""
        if not providers:
            return await self.due(now, limit)
        query = {
            "status": PENDING,
            "next_attempt_at": {"$lte": now},
            "provider": {"$nin": providers},
        }
        cursor = (
            self.coll.find(query, {"provider": 1}).sort("next_attempt_at", ASCENDING).limit(limit)
        )
        return [(d["_id"], d["provider"]) async for d in cursor]

    async def hold(self, event: WebhookEvent, now: datetime, until: datetime) -> bool:
        """Set aside an event we hold the lease of, its endpoint being disabled: no attempt
        is recorded; it is looked at again at ``until`` (or when the endpoint is set again)."""
        result = await self.coll.update_one(
            {"_id": event.event_id, "lease_until": event.lease_until},
            {"$set": {"next_attempt_at": until, "lease_until": now}},
        )
        return result.modified_count == 1

    async def release_held(self, provider: str, now: datetime) -> int:
        """The provider's endpoint was set again: every pending event is due now."""
        result = await self.coll.update_many(
            {"provider": provider, "status": PENDING}, {"$set": {"next_attempt_at": now}}
        )
        return result.modified_count

    async def get(self, provider: str, event_id: str) -> WebhookEvent | None:
        doc = await self.coll.find_one({"_id": event_id, "provider": provider})
        return event_from_doc(doc) if doc else None

    async def page(
        self, provider: str, request: PageRequest
    ) -> tuple[list[WebhookEvent], str | None]:
        docs, next_cursor = await newest_first(self.coll, provider, request)
        return [event_from_doc(d) for d in docs], next_cursor

    async def redeliver(self, provider: str, event_id: str, now: datetime) -> WebhookEvent | None:
        """Start a new round of attempts (the history is kept)."""
        doc = await cas(
            self.coll,
            {"_id": event_id, "provider": provider},
            {"$set": {"status": PENDING, "next_attempt_at": now, "tries": 0}},
        )
        return event_from_doc(doc) if doc else None

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
        result = await self.coll.update_many(
            query, {"$set": {"status": PENDING, "next_attempt_at": now, "tries": 0}}
        )
        return result.modified_count

    async def counts(self) -> dict[str, int]:
        return {s.value: await self.coll.count_documents({"status": s.value}) for s in EventStatus}

    async def oldest_pending(self) -> datetime | None:
        """Creation time of the oldest undelivered event (pending events are few: read
        through the ``due`` index and compared here rather than kept in another index)."""
        cursor = self.coll.find({"status": PENDING}, {"created_at": 1})
        times = [d["created_at"] async for d in cursor]
        return min(times) if times else None
