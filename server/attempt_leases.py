"""Leases that live as long as their holder.

A process that claims a claim (or takes it over to ask the switch about it) holds a short
lease on it (``lifecycle.LeaseRules``), stored as the claim's ``next_at``. While its gateway
call runs it renews the lease every third of its length, so a 4 x 70 s EBS call never needs a
long lease, and a process that dies or freezes loses its claims to another process (or to
itself restarted) within one lease. A holder that has lost its lease never starts a send.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from datetime import datetime

from server.errors import Unavailable
from server.lifecycle import LeaseRules
from server.models import utcnow
from server.store import Store

log = logging.getLogger("cashout.leases")


class Held:
    """One lease this process holds on one processing claim."""

    def __init__(self, keeper: LeaseKeeper, uuid: str, until: datetime | None) -> None:
        self.keeper = keeper
        self.uuid = uuid
        self.until = until
        self.lost = until is None

    def may_send(self) -> bool:
        """Whether a send may start now: the lease is ours with a third of it left (by this
        process's own clock, checked the moment before the gateway sends)."""
        return not self.lost and self.keeper.rules.may_send(self.until, utcnow())

    async def renew(self) -> bool:
        """Extend the lease now; False once it is lost (someone else took the claim)."""
        if self.lost or self.until is None:
            return False
        until = utcnow() + self.keeper.rules.length
        try:
            renewed = await self.keeper.store.claims.renew_lease(self.uuid, self.until, until)
        except Unavailable:
            return True  # unknown: keep the old end; may_send() judges by it
        if renewed:
            self.until = until
        else:
            self.lost = True
            log.warning("claim %s…: lease lost to another process", self.uuid[:8])
        return renewed

    async def ready_to_send(self) -> bool:
        """Renew first if too little of the lease is left; never give up on a lease that is
        still ours because the database was slow: only a lost lease stops a send."""
        while not self.lost and not self.may_send():
            if not await self.renew():
                return False
            if not self.may_send():
                await asyncio.sleep(0.1)  # the database is slow: try again, do not park
        return not self.lost


class LeaseKeeper:
    def __init__(self, store: Store, rules: LeaseRules) -> None:
        self.store = store
        self.rules = rules

    @asynccontextmanager
    async def hold(self, uuid: str, until: datetime | None) -> AsyncIterator[Held]:
        """Hold the lease ending ``until`` (as this process wrote it) while the block runs,
        renewing it in the background."""
        held = Held(self, uuid, until)
        beat = asyncio.ensure_future(self._heartbeat(held))
        try:
            yield held
        finally:
            beat.cancel()
            with suppress(asyncio.CancelledError):
                await beat

    async def _heartbeat(self, held: Held) -> None:
        period = self.rules.renew_every.total_seconds()
        while not held.lost:
            await asyncio.sleep(period)
            await held.renew()
