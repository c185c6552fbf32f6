"""Daily totals: one counter document per provider and UTC day, moved only by atomic
``$inc`` under a limit."""

from __future__ import annotations

from pymongo.errors import DuplicateKeyError

from server.store.base import Coll, speaks_our_errors


@speaks_our_errors
class DailyTotals:
    def __init__(self, coll: Coll) -> None:
        self.coll = coll

    async def reserve(self, provider: str, day: str, amount: int, limit: int) -> bool:
        """Atomically add ``amount`` to the day's total unless that would pass ``limit``.

        ``update_one`` rather than ``find_one_and_update``: its counts are what decide, and
        the embedded server can answer a racing upsert with no document although it applied.
        """
        if amount > limit:  # the upsert below would create the day already over the limit
            return False
        query = {"_id": f"{provider}:{day}", "total": {"$lte": limit - amount}}
        update = {"$inc": {"total": amount}, "$setOnInsert": {"provider": provider, "day": day}}
        try:
            result = await self.coll.update_one(query, update, upsert=True)
        except DuplicateKeyError:
            # Either the day's document is too full to match, or a concurrent first
            # reservation created it under us; now that it exists, a plain update decides.
            result = await self.coll.update_one(query, update)
        return result.modified_count == 1 or result.upserted_id is not None

    async def release(self, provider: str, day: str, amount: int) -> None:
        if amount == 0:
            return
        await self.coll.update_one({"_id": f"{provider}:{day}"}, {"$inc": {"total": -amount}})

    async def total(self, provider: str, day: str) -> int:
        doc = await self.coll.find_one({"_id": f"{provider}:{day}"})
        return int(doc["total"]) if doc else 0
