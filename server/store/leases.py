"""Named leases shared by every server process (e.g. who reconciles now)."""

from __future__ import annotations

from datetime import datetime

from pymongo.errors import DuplicateKeyError

from server.store.base import Coll, speaks_our_errors


@speaks_our_errors
class Leases:
    def __init__(self, coll: Coll) -> None:
        self.coll = coll

    async def acquire(self, name: str, holder: str, now: datetime, until: datetime) -> bool:
        """Take or extend lease ``name`` for ``holder`` unless another holder's is live."""
        query = {"_id": name, "$or": [{"until": {"$lte": now}}, {"holder": holder}]}
        update = {"$set": {"holder": holder, "until": until}}
        try:
            result = await self.coll.update_one(query, update, upsert=True)
        except DuplicateKeyError:
            return False  # held by another process
        return result.modified_count == 1 or result.upserted_id is not None
