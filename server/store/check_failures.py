"""Failed card checks, counted per card, per client address and per provider: one counter
document each, ``_id`` the counter's key (a card's HMAC name, never its number).

A counter holds ``count`` (failures plus checks still in flight) until ``until``; a new
window starts (``gen`` + 1) once that has passed. A check takes a slot before the switch is
asked (``take``), gives it back when the card was good (``give_back``), and keeps it when it
was refused (``keep``, which also moves ``until`` to 24 hours after that failure). Taking
slots first is what makes the limit hold under concurrency: however many checks of one card
arrive at once, at most ``limit`` of them are ever sent to the switch per window.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from pymongo.errors import DuplicateKeyError

from server.store.base import Coll, speaks_our_errors

RETRIES = 50  # compare-and-set rounds before a check gives up (and is refused, not sent)


@dataclass(frozen=True)
class Slot:
    """One check's place in a counter's window."""

    key: str
    gen: int


@speaks_our_errors
class CheckFailures:
    def __init__(self, coll: Coll) -> None:
        self.coll = coll

    async def take(
        self, key: str, limit: int, now: datetime, window_until: datetime
    ) -> Slot | None:
        """A slot for one check, or None when the counter is full (locked out)."""
        for _ in range(RETRIES):
            doc = await self.coll.find_one({"_id": key})
            if doc is None:
                try:
                    await self.coll.insert_one(
                        {"_id": key, "gen": 1, "count": 1, "until": window_until}
                    )
                except DuplicateKeyError:
                    continue
                return Slot(key, 1)
            gen, count = int(doc["gen"]), int(doc["count"])
            if doc["until"] <= now:  # the window is over: start a new one
                result = await self.coll.update_one(
                    {"_id": key, "gen": gen},
                    {"$set": {"gen": gen + 1, "count": 1, "until": window_until}},
                )
                if result.modified_count == 1:
                    return Slot(key, gen + 1)
                continue
            if count >= limit:
                return None
            result = await self.coll.update_one(
                {"_id": key, "gen": gen, "count": count}, {"$inc": {"count": 1}}
            )
            if result.modified_count == 1:
                return Slot(key, gen)
        return None

    async def give_back(self, slot: Slot) -> None:
        await self.coll.update_one(
            {"_id": slot.key, "gen": slot.gen, "count": {"$gt": 0}}, {"$inc": {"count": -1}}
        )

    async def keep(self, slot: Slot, until: datetime) -> int:
        """Count the slot as a failure, remembered until ``until``; the counter's count."""
        await self.coll.update_one({"_id": slot.key, "gen": slot.gen}, {"$max": {"until": until}})
        doc = await self.coll.find_one({"_id": slot.key})
        return int(doc["count"]) if doc and int(doc["gen"]) == slot.gen else 0

    async def count(self, key: str, now: datetime) -> int:
        doc = await self.coll.find_one({"_id": key})
        return int(doc["count"]) if doc and doc["until"] > now else 0
