"""Claims: one document per claim, ``_id`` its UUID. Every change of status goes through
``apply``, the one compare-and-set that turns a ``lifecycle.Transition`` into a guarded
update."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from pymongo import ASCENDING, UpdateOne
from pymongo.errors import BulkWriteError, OperationFailure

from server.lifecycle import MAX_ATTEMPTS, NOTIFIED, Transition
from server.models import AttemptOutcome, Claim, ClaimStatus, PageRequest
from server.store.base import (
    DUPLICATE_KEY,
    Coll,
    Doc,
    Duplicate,
    cas,
    newest_first,
    speaks_our_errors,
)
from server.store.codecs import attempt_doc, claim_doc, claim_from_doc, sealed_doc

OPEN_OUTCOMES = [str(AttemptOutcome.IN_FLIGHT), str(AttemptOutcome.UNKNOWN)]


def new_op() -> str:
    return secrets.token_hex(8)


def transition_query(t: Transition) -> Doc:
    """The compare of the compare-and-set: the claim as the transition expects it."""
    query: Doc = {"_id": t.uuid, "status": str(t.source)}
    g = t.guard
    if g.provider is not None:
        query["provider"] = g.provider
    if g.expired is True:
        query["expires_at"] = {"$lte": t.at}
    elif g.expired is False:
        query["expires_at"] = {"$gt": t.at}
    if g.room_for_attempt:
        query[f"attempts.{MAX_ATTEMPTS - 1}"] = {"$exists": False}
    if g.open_attempt is not None:
        index, tran_uuid = g.open_attempt
        query[f"attempts.{index}.tran_uuid"] = tran_uuid
        query[f"attempts.{index}.outcome"] = {"$in": OPEN_OUTCOMES}
    return query


def transition_update(t: Transition, op: str) -> Doc:
    """The set of the compare-and-set. ``op`` marks the write so that a batch of them can
    tell, reading the claims back, which ones it won."""
    changes: Doc = {"status": str(t.target), "next_at": t.next_at, "op": op}
    update: Doc = {"$set": changes}
    d = t.decision
    if d is not None and t.guard.open_attempt is not None:
        at = f"attempts.{t.guard.open_attempt[0]}"
        changes[f"{at}.outcome"] = str(d.outcome)
        changes[f"{at}.code"] = d.code
        changes[f"{at}.message"] = d.message
        if d.outcome is not AttemptOutcome.UNKNOWN:
            changes[f"{at}.finished_at"] = t.at
        if t.target is not ClaimStatus.PROCESSING or d.outcome is not AttemptOutcome.UNKNOWN:
            changes["response_code"] = d.code
            changes["response_message"] = d.message
        if d.reference:
            changes["reference"] = d.reference
        if t.begin is not None:
            changes[f"attempts.{t.guard.open_attempt[0] + 1}"] = attempt_doc(t.begin)
    elif t.begin is not None:  # claiming: the first (or a later) attempt from pending
        update["$push"] = {"attempts": attempt_doc(t.begin)}
        update["$min"] = {"claimed_at": t.at}
    if t.card is not None and t.begin is not None:
        changes["card.pan"] = sealed_doc(t.card)
        changes["card.last4"] = t.begin.card_last4
    if t.terminal:
        changes["completed_at"] = t.at
    if t.target is not ClaimStatus.PROCESSING:
        update["$unset"] = {"card.pan": ""}  # keep the customer's card no longer than needed
    return update


NOTIFIED_STATUSES = [str(s) for s in NOTIFIED]


@speaks_our_errors
class ClaimStore:
    def __init__(self, coll: Coll) -> None:
        self.coll = coll

    async def insert_many(self, claims: Sequence[Claim]) -> list[Exception | None]:
        """Insert many claims in one round trip: per claim, None, ``Duplicate`` or the error.

        Unordered, so one refused claim does not stop the others being written.
        """
        if not claims:
            return []
        try:
            await self.coll.insert_many([claim_doc(c) for c in claims], ordered=False)
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

    async def get(self, provider: str, uuid: str) -> Claim | None:
        doc = await self.coll.find_one({"_id": uuid, "provider": provider})
        return claim_from_doc(doc) if doc else None

    async def get_many(self, uuids: Sequence[str]) -> dict[str, Claim]:
        """The claims of these UUIDs, in one round trip."""
        wanted = list(dict.fromkeys(uuids))
        query = {"_id": wanted[0] if len(wanted) == 1 else {"$in": wanted}}
        return {d["_id"]: claim_from_doc(d) async for d in self.coll.find(query)}

    async def get_any(self, uuid: str) -> Claim | None:
        doc = await self.coll.find_one({"_id": uuid})
        return claim_from_doc(doc) if doc else None

    async def by_ref(self, provider: str, ref: str) -> Claim | None:
        doc = await self.coll.find_one({"provider": provider, "ref": ref})
        return claim_from_doc(doc) if doc else None

    async def page(self, provider: str, request: PageRequest) -> tuple[list[Claim], str | None]:
        docs, next_cursor = await newest_first(self.coll, provider, request)
        return [claim_from_doc(d) for d in docs], next_cursor

    async def apply(self, t: Transition) -> Claim | None:
        """Change a claim's status as ``t`` says, only if it is still as ``t`` expects;
        None when it is not (someone else changed it first, or it never matched)."""
        op = new_op()
        doc = await cas(self.coll, transition_query(t), transition_update(t, op))
        return claim_from_doc(doc) if doc else None

    async def apply_many(self, ts: Sequence[Transition]) -> list[Claim | None]:
        """``apply`` for many claims in two round trips (group commit): one unordered bulk
        write, then one read of every claim. A claim whose ``op`` is the one its write set
        was changed by that write; any other was not (or was changed again since, which
        reads as "not": never a false win)."""
        if not ts:
            return []
        ops = [new_op() for _ in ts]
        writes = [
            UpdateOne(transition_query(t), transition_update(t, op))
            for t, op in zip(ts, ops, strict=True)
        ]
        await self.coll.bulk_write(writes, ordered=False)
        found = {d["_id"]: d async for d in self.coll.find({"_id": {"$in": [t.uuid for t in ts]}})}
        return [
            claim_from_doc(doc) if (doc := found.get(t.uuid)) and doc.get("op") == op else None
            for t, op in zip(ts, ops, strict=True)
        ]

    # -- leases on processing claims -----------------------------------------------------

    async def due_for_reconcile(
        self, now: datetime, limit: int, include_unknown: bool = False
    ) -> list[Claim]:
        """Processing claims whose lease ran out; with ``include_unknown`` also those whose
        attempt already came back unknown (an operator asking to settle them now)."""
        processing = {"status": str(ClaimStatus.PROCESSING)}
        query: Doc = {**processing, "next_at": {"$lte": now}}
        if include_unknown:
            query = processing
        cursor = self.coll.find(query).sort("next_at", ASCENDING).limit(limit)
        claims = [claim_from_doc(d) async for d in cursor]
        if include_unknown:
            claims = [
                c
                for c in claims
                if (c.next_at is not None and c.next_at <= now)
                or any(a.outcome is AttemptOutcome.UNKNOWN for a in c.attempts)
            ]
        return claims

    async def take_lease(self, claim: Claim, until: datetime) -> Claim | None:
        """Compare-and-set the claim's lease, so one process at a time settles it."""
        doc = await cas(self.coll, self._lease_query(claim), {"$set": {"next_at": until}})
        return claim_from_doc(doc) if doc else None

    async def renew_lease(self, uuid: str, held: datetime, until: datetime) -> bool:
        """Extend a lease this process holds (``held`` is its current end) to ``until``;
        False when someone took it (or the claim was settled) since."""
        result = await self.coll.update_one(
            {"_id": uuid, "status": str(ClaimStatus.PROCESSING), "next_at": held},
            {"$set": {"next_at": until}},
        )
        return result.matched_count == 1

    @staticmethod
    def _lease_query(claim: Claim) -> dict[str, Any]:
        return {"_id": claim.uuid, "status": str(ClaimStatus.PROCESSING), "next_at": claim.next_at}

    async def overdue_pending(self, now: datetime, limit: int) -> list[str]:
        cursor = (
            self.coll.find(
                {"status": str(ClaimStatus.PENDING), "next_at": {"$lte": now}}, {"_id": 1}
            )
            .sort("next_at", ASCENDING)
            .limit(limit)
        )
        return [d["_id"] async for d in cursor]

    # -- the outbox's first half -----------------------------------------------------------

    async def owed_an_event(self, now: datetime, limit: int) -> list[Claim]:
        """Finished claims whose webhook event is overdue (its writer crashed, say)."""
        cursor = self.coll.find({"status": {"$in": NOTIFIED_STATUSES}, "next_at": {"$lte": now}})
        return [claim_from_doc(d) async for d in cursor.limit(limit)]

    async def events_written(self, claim_uuids: Sequence[str]) -> None:
        """The claims' events are in the outbox: nothing more is owed (one round trip)."""
        if claim_uuids:
            await self.coll.update_many(
                {"_id": {"$in": list(claim_uuids)}, "status": {"$in": NOTIFIED_STATUSES}},
                {"$set": {"next_at": None}},
            )
