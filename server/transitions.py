"""The one door through which a claim changes status: apply a ``lifecycle.Transition`` with
the store's compare-and-set, then tell whoever listens for claims that reached an end."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from server import metrics
from server.batching import Batcher
from server.lifecycle import Transition
from server.models import Claim
from server.store import Store

log = logging.getLogger("cashout.claims")

TerminalHook = Callable[[Claim], Awaitable[None]]
AppliedHook = Callable[[Transition, Claim], Awaitable[None]]


class Transitions:
    def __init__(self, store: Store, max_batch: int = 256) -> None:
        self.store = store
        self.on_terminal: list[TerminalHook] = []
        # Group commit: claims being claimed or settled at the same moment share one bulk
        # write and one read (two round trips a batch, not two a claim).
        self._batches: Batcher[Transition, Claim | None] = Batcher(
            "transition",
            self.store.claims.apply_many,
            max_batch=max_batch,
            observe=metrics.observe_batch,
        )
        # Every applied transition (e.g. card limits give back what a failed transfer held).
        self.on_applied: list[AppliedHook] = []

    async def apply(self, t: Transition) -> Claim | None:
        """The claim after ``t``, or None when it no longer matched (someone else moved it
        first). Terminal hooks run here and only here."""
        claim = await self._batches.submit(t)
        if claim is not None:
            for applied in self.on_applied:
                await applied(t, claim)
        if claim is not None and claim.status.terminal:
            log.info("claim %s… is %s", claim.uuid[:8], claim.status)
            for hook in self.on_terminal:
                await hook(claim)
        return claim
