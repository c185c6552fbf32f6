"""Card holds: what one claim submission counted against its cards' daily limits, so that
exactly that is given back if the transfer does not pay (``CardHold``)."""

from __future__ import annotations

from collections.abc import Sequence

from server.models import CardHold
from server.store.base import Coll, speaks_our_errors
from server.store.codecs import hold_doc, hold_from_doc


@speaks_our_errors
class CardHolds:
    def __init__(self, coll: Coll) -> None:
        self.coll = coll

    async def insert(self, hold: CardHold) -> None:
        await self.coll.insert_one(hold_doc(hold))

    async def insert_many(self, holds: Sequence[CardHold]) -> None:
        if holds:
            await self.coll.insert_many([hold_doc(h) for h in holds], ordered=False)

    async def live_for(self, claim: str) -> list[CardHold]:
        cursor = self.coll.find({"claim": claim, "released": False})
        return [hold_from_doc(d) async for d in cursor]

    async def mark_released(self, hold_id: str) -> bool:
        """True for the one caller that releases the hold (across processes)."""
        result = await self.coll.update_one(
            {"_id": hold_id, "released": False}, {"$set": {"released": True}}
        )
        return result.modified_count == 1
