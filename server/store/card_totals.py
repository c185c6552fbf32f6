"""Money per card and UTC day: one counter document per card, day and direction (``to``: a
receiving card, ``from``: a paying card), ``_id`` ``<day>:<direction>:<card name>``, moved
only by atomic ``$inc`` under the limits (like ``DailyTotals``)."""

from __future__ import annotations

from typing import Any

from pymongo.errors import DuplicateKeyError

from server.store.base import Coll, speaks_our_errors


def _key(day: str, direction: str, card: str) -> str:
    return f"{day}:{direction}:{card}"


@speaks_our_errors
class CardTotals:
    def __init__(self, coll: Coll) -> None:
        self.coll = coll

    async def reserve(
        self,
        day: str,
        direction: str,
        card: str,
        amount: int,
        max_amount: int,
        max_count: int | None = None,
    ) -> bool:
        """Add one payout of ``amount`` unless that passes ``max_amount`` (or, with
        ``max_count``, that many payouts): one atomic update that decides."""
        if amount > max_amount or (max_count is not None and max_count < 1):
            return False
        query: dict[str, Any] = {
            "_id": _key(day, direction, card),
            "amount": {"$lte": max_amount - amount},
        }
        if max_count is not None:
            query["count"] = {"$lte": max_count - 1}
        update = {
            "$inc": {"amount": amount, "count": 1},
            "$setOnInsert": {"day": day, "direction": direction},
        }
        try:
            result = await self.coll.update_one(query, update, upsert=True)
        except DuplicateKeyError:
            # The document is too full to match, or a concurrent first reservation made it
            # under us; now that it exists, a plain update decides.
            result = await self.coll.update_one(query, update)
        return result.modified_count == 1 or result.upserted_id is not None

    async def release(self, day: str, direction: str, card: str, amount: int) -> None:
        await self.coll.update_one(
            {"_id": _key(day, direction, card)}, {"$inc": {"amount": -amount, "count": -1}}
        )

    async def get(self, day: str, direction: str, card: str) -> tuple[int, int]:
        """(payouts, amount) counted for the card that day."""
        doc = await self.coll.find_one({"_id": _key(day, direction, card)})
        return (int(doc["count"]), int(doc["amount"])) if doc else (0, 0)
