"""Every sealed value wherever it is stored, for re-encryption to a new key."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from server.crypto import Sealed
from server.store.base import Coll, speaks_our_errors
from server.store.codecs import sealed_doc


@dataclass(frozen=True)
class SealedField:
    """Where one sealed value lives, and the associated-data name it was sealed under."""

    collection: str
    doc_id: str
    path: str
    aad_field: str
    value: Sealed


@speaks_our_errors
class SealedValues:
    def __init__(self, providers: Coll, claims: Coll) -> None:
        self.colls = {"providers": providers, "claims": claims}

    async def not_sealed_by(self, kid: str) -> AsyncIterator[SealedField]:
        """Every sealed value not sealed by key ``kid``."""
        providers = self.colls["providers"].find(
            {
                "$or": [
                    {"card.pan.kid": {"$ne": kid}},
                    {"card.exp.kid": {"$ne": kid}},
                    {"card.ipin.kid": {"$ne": kid}},
                    {"secrets.secret.kid": {"$ne": kid}},
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
        claims = self.colls["claims"].find(
            {"card.pan": {"$exists": True}, "card.pan.kid": {"$ne": kid}}
        )
        async for doc in claims:
            yield SealedField(
                "claims", doc["_id"], "card.pan", "card.pan", Sealed.from_doc(doc["card"]["pan"])
            )

    async def swap(self, field: SealedField, new: Sealed) -> bool:
        """Replace one sealed value only if it is still the one we read."""
        result = await self.colls[field.collection].update_one(
            {"_id": field.doc_id, field.path: sealed_doc(field.value)},
            {"$set": {field.path: sealed_doc(new)}},
        )
        return result.modified_count == 1
