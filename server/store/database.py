"""The connection and the per-collection stores, built once."""

from __future__ import annotations

from datetime import datetime

from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError

from server.models import ClaimStatus, SystemFigures, as_utc
from server.store.audit import AuditStore
from server.store.base import Doc, speaks_our_errors
from server.store.card_holds import CardHolds
from server.store.card_totals import CardTotals
from server.store.check_failures import CheckFailures
from server.store.claims import ClaimStore
from server.store.indexes import INDEXES
from server.store.invites import InviteStore
from server.store.leases import Leases
from server.store.outbox import EventStore
from server.store.providers import ProviderStore
from server.store.sealed import SealedValues
from server.store.totals import DailyTotals


@speaks_our_errors
class Store:
    """The service's MongoDB database, one attribute per collection."""

    def __init__(self, uri: str, db_name: str, timeout_ms: int = 5000) -> None:
        self.client: AsyncMongoClient[Doc] = AsyncMongoClient(
            uri,
            serverSelectionTimeoutMS=timeout_ms,
            connectTimeoutMS=timeout_ms,
            socketTimeoutMS=max(timeout_ms * 2, 10_000),
            tz_aware=True,
        )
        self.db: AsyncDatabase[Doc] = self.client[db_name]
        self.providers = ProviderStore(self.db.providers)
        self.claims = ClaimStore(self.db.claims)
        self.totals = DailyTotals(self.db.daily_totals)
        self.events = EventStore(self.db.events)
        self.leases = Leases(self.db.leases)
        self.sealed = SealedValues(self.db.providers, self.db.claims)
        # Production controls (docs/DESIGN.md section 12).
        self.audit = AuditStore(self.db.audit)
        self.invites = InviteStore(self.db.invites)
        self.check_failures = CheckFailures(self.db.card_check_failures)
        self.card_totals = CardTotals(self.db.card_totals)
        self.card_holds = CardHolds(self.db.card_holds)

    async def close(self) -> None:
        await self.client.close()

    async def ping(self) -> bool:
        try:
            await self.db.command("ping")
            return True
        except PyMongoError:
            return False

    async def create_indexes(self) -> None:
        """The indexes of ``INDEXES``, and no others of ours: an index an older version made
        and this one no longer queries by would only slow every write down."""
        wanted = {(c, o["name"]) for c, _, o in INDEXES}
        for collection in {c for c, _ in wanted}:
            async for index in await self.db[collection].list_indexes():
                name = index["name"]
                if name != "_id_" and (collection, name) not in wanted:
                    await self.db[collection].drop_index(name)
        for collection, keys, options in INDEXES:
            await self.db[collection].create_index(keys, **options)

    async def drop(self) -> None:
        """Drop the whole database (tests and throw-away stores only)."""
        await self.client.drop_database(self.db.name)

    async def figures(self, now: datetime) -> SystemFigures:
        """What the whole system looks like right now (for metrics and operators)."""
        claims = self.db.claims
        by_status = {
            s.value: await claims.count_documents({"status": s.value}) for s in ClaimStatus
        }
        backlog = await claims.count_documents(
            {"status": str(ClaimStatus.PROCESSING), "next_at": {"$lte": now}}
        )
        oldest = await self.events.oldest_pending()
        lag = (now - as_utc(oldest)).total_seconds() if oldest else 0.0
        return SystemFigures(by_status, backlog, await self.events.counts(), max(lag, 0.0))
