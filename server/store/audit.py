"""The audit log: one document per change a provider or the operator made, never updated."""

from __future__ import annotations

from pymongo import DESCENDING

from server.models import AuditEntry, PageRequest
from server.store.base import Coll, Doc, newest_first, speaks_our_errors
from server.store.codecs import audit_doc, audit_from_doc


@speaks_our_errors
class AuditStore:
    def __init__(self, coll: Coll) -> None:
        self.coll = coll

    async def insert(self, entry: AuditEntry) -> None:
        await self.coll.insert_one(audit_doc(entry))

    async def page(
        self, provider: str, request: PageRequest
    ) -> tuple[list[AuditEntry], str | None]:
        """One page of a provider's entries, newest first, and the cursor to the next."""
        docs, next_cursor = await newest_first(self.coll, provider, request)
        return [audit_from_doc(d) for d in docs], next_cursor

    async def recent(self, provider: str | None, everyone: bool, limit: int) -> list[AuditEntry]:
        """The operator's view: the newest entries of one provider, of no provider (before
        registration: card-check lockouts) or, with ``everyone``, of all."""
        query: Doc = {} if everyone else {"provider": provider}
        cursor = (
            self.coll.find(query)
            .sort([("created_at", DESCENDING), ("_id", DESCENDING)])
            .limit(limit)
        )
        return [audit_from_doc(d) async for d in cursor]
