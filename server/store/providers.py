"""Provider accounts: one document per provider, ``_id`` its name."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from pymongo.errors import DuplicateKeyError

from server.models import OwedEvent, Provider, SealedCard, WebhookSecret
from server.store.base import Coll, Duplicate, cas, speaks_our_errors
from server.store.codecs import (
    card_doc,
    endpoint_health_doc,
    owed_event_doc,
    owed_events_from_doc,
    provider_doc,
    provider_from_doc,
    provider_guard,
    secrets_doc,
    suspended_doc,
)


@speaks_our_errors
class ProviderStore:
    def __init__(self, coll: Coll) -> None:
        self.coll = coll

    async def insert(self, provider: Provider) -> None:
        try:
            await self.coll.insert_one(provider_doc(provider))
        except DuplicateKeyError as exc:
            raise Duplicate(provider.name) from exc

    async def get(self, name: str) -> Provider | None:
        doc = await self.coll.find_one({"_id": name})
        return provider_from_doc(doc) if doc else None

    async def by_names(self, names: Sequence[str]) -> dict[str, Provider]:
        """The providers of these names, in one round trip."""
        wanted = list(dict.fromkeys(names))
        query = {"_id": wanted[0] if len(wanted) == 1 else {"$in": wanted}}
        return {doc["_id"]: provider_from_doc(doc) async for doc in self.coll.find(query)}

    async def by_key_hashes(self, key_hashes: Sequence[str]) -> dict[str, Provider]:
        """The providers owning any of these key hashes, in one round trip."""
        wanted = list(dict.fromkeys(key_hashes))
        query = {"key_hash": wanted[0] if len(wanted) == 1 else {"$in": wanted}}
        return {doc["key_hash"]: provider_from_doc(doc) async for doc in self.coll.find(query)}

    async def update(
        self,
        name: str,
        *,
        updated_at: datetime,
        endpoint: str | None = None,
        card: SealedCard | None = None,
        key_hash: str | None = None,
        secrets: tuple[WebhookSecret, ...] | None = None,
        texts: Mapping[str, str | None] | None = None,
        expect: Provider | None = None,
        active: bool = False,
        suspend: tuple[datetime, str] | None = None,
        resume: bool = False,
        owed: Sequence[OwedEvent] = (),
    ) -> Provider | None:
        """Change a provider; None when it does not match. ``texts``: ``display_name`` and
        ``support`` to set (``None`` removes one). With ``expect`` (the provider as the
        caller read it) this is a compare-and-set: every field being changed must still be
        as read, so of two concurrent rotations one wins and the other is told. With
        ``active``, only while not suspended. ``owed`` security events are written in the
        same update, so a change is never made without its notice."""
        changes: dict[str, Any] = {"updated_at": updated_at}
        for field in ("display_name", "support"):
            if texts is not None and field in texts:
                changes[field] = texts[field]
        if endpoint is not None:
            changes["endpoint"] = endpoint
            # Setting the endpoint (even to the same URL) re-enables it with a clean slate.
            changes.update(endpoint_health_doc(None, None, None))
        if card is not None:
            changes["card"] = card_doc(card)
        if key_hash is not None:
            changes["key_hash"] = key_hash
        if secrets is not None:
            changes["secrets"] = secrets_doc(secrets)
        if suspend is not None:
            changes["suspended"] = suspended_doc(*suspend)
        update: dict[str, Any] = {"$set": changes}
        if resume:
            update["$unset"] = {"suspended": ""}
        if owed:
            update["$push"] = {"owed_events": {"$each": [owed_event_doc(e) for e in owed]}}
        query: dict[str, Any] = {"_id": name}
        if expect is not None:
            query = provider_guard(
                expect,
                key=key_hash is not None,
                secrets=secrets is not None,
                card=card is not None,
                endpoint=endpoint is not None,
            )
        if active or suspend is not None:
            query["suspended"] = None
        if resume:
            query["suspended.at"] = {"$exists": True}
        doc = await cas(self.coll, query, update)
        return provider_from_doc(doc) if doc else None

    # -- webhook endpoint health: each change only for the endpoint the attempt went to, so
    # an attempt to an old endpoint never marks the one the provider has set since.

    async def endpoint_failing(self, name: str, endpoint: str, since: datetime) -> None:
        """Every delivery to ``endpoint`` fails from ``since`` on (unless already marked)."""
        await self.coll.update_one(
            {"_id": name, "endpoint": endpoint, "endpoint_failing_since": None},
            {"$set": {"endpoint_failing_since": since}},
        )

    async def endpoint_working(self, name: str, endpoint: str) -> None:
        """A delivery to ``endpoint`` succeeded: it is not failing any more."""
        await self.coll.update_one(
            {"_id": name, "endpoint": endpoint, "endpoint_failing_since": {"$ne": None}},
            {"$set": {"endpoint_failing_since": None}},
        )

    async def disable_endpoint(
        self, name: str, endpoint: str, at: datetime, reason: str
    ) -> Provider | None:
        """Disable ``endpoint``; None if it had changed or was disabled already."""
        doc = await cas(
            self.coll,
            {"_id": name, "endpoint": endpoint, "endpoint_disabled_at": None},
            {"$set": {"endpoint_disabled_at": at, "endpoint_disabled_reason": reason}},
        )
        return provider_from_doc(doc) if doc else None

    async def owing_events(self, limit: int) -> list[tuple[str, list[OwedEvent]]]:
        """Providers whose security events are not yet in the outbox (a crash came between
        the change and the outbox write), with those events."""
        cursor = self.coll.find({"owed_events.id": {"$exists": True}}, {"owed_events": 1}).limit(
            limit
        )
        return [(d["_id"], owed_events_from_doc(d)) async for d in cursor]

    async def event_written(self, name: str, event_id: str) -> None:
        await self.coll.update_one({"_id": name}, {"$pull": {"owed_events": {"id": event_id}}})

    async def all(self) -> list[Provider]:
        return [provider_from_doc(d) async for d in self.coll.find().sort("_id")]
