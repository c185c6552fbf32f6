"""Registration invites: one document per code, ``_id`` the code's hash. Using one is a
compare-and-set, so of two registrations racing with one code exactly one gets it."""

from __future__ import annotations

from datetime import datetime

from pymongo.errors import DuplicateKeyError

from server.models import Invite
from server.store.base import Coll, Duplicate, cas, speaks_our_errors
from server.store.codecs import invite_doc, invite_from_doc


@speaks_our_errors
class InviteStore:
    def __init__(self, coll: Coll) -> None:
        self.coll = coll

    async def insert(self, invite: Invite) -> None:
        try:
            await self.coll.insert_one(invite_doc(invite))
        except DuplicateKeyError as exc:
            raise Duplicate(invite.invite_id) from exc

    async def get(self, code_hash: str) -> Invite | None:
        doc = await self.coll.find_one({"_id": code_hash})
        return invite_from_doc(doc) if doc else None

    async def take(self, code_hash: str, name: str, now: datetime) -> Invite | None:
        """Use the code for provider ``name``, only if no one has and it has not expired."""
        doc = await cas(
            self.coll,
            {"_id": code_hash, "used_by": None, "expires_at": {"$gt": now}},
            {"$set": {"used_by": name, "used_at": now}},
        )
        return invite_from_doc(doc) if doc else None

    async def give_back(self, code_hash: str, name: str) -> None:
        """The registration that took the code failed after all: the code is usable again."""
        await self.coll.update_one(
            {"_id": code_hash, "used_by": name}, {"$set": {"used_by": None, "used_at": None}}
        )
