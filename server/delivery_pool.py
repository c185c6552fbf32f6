"""Webhook delivery slots, shared fairly between providers.

A delivery holds its slot until the endpoint answers or the timeout passes, so endpoints
that hang hold slots for the whole timeout. A cap per provider alone does not stop a few
such providers from filling the pool together, and then every other provider waits for
their timeouts. So, besides ``total`` and ``per_provider``:

- **a reserve for newcomers**: a provider that already has a delivery running may start
  another only while more than ``reserve`` slots (a quarter of the pool) are free, so a
  provider with nothing in flight always finds a slot at once;
- **failing endpoints share half**: a provider whose last delivery failed (or timed out)
  gets one slot at a time, and all of them together at most half of the pool, so
  endpoints that hang cannot hold more than that for longer than one timeout;
- **the least served first**: when a slot frees up, it goes to the waiting provider with
  the fewest deliveries running (first come first served among equals), not to whoever
  queued the most events.
"""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class DeliveryPool:
    def __init__(self, total: int, per_provider: int) -> None:
        self.total = total
        self.per_provider = per_provider
        self.reserve = total // 4
        self.failing_share = max(1, total // 2)
        self.running: Counter[str] = Counter()
        self.in_use = 0
        self.failing_in_use = 0
        self.failing: set[str] = set()  # providers whose last delivery failed
        self._waiting: dict[str, deque[asyncio.Future[bool]]] = {}
        self._arrivals = 0
        self._first_arrival: dict[str, int] = {}

    def mark(self, provider: str, failing: bool) -> None:
        """Record how the provider's last delivery went (for the next slots it asks for)."""
        if failing:
            self.failing.add(provider)
        else:
            self.failing.discard(provider)
            self._wake()  # it may start more than one again

    def _allowed(self, provider: str) -> bool:
        free = self.total - self.in_use
        held = self.running[provider]
        if free <= 0:
            return False
        if provider in self.failing:
            return held == 0 and self.failing_in_use < self.failing_share
        if held >= self.per_provider:
            return False
        return held == 0 or free > self.reserve

    def _grant(self, provider: str) -> bool:
        failing = provider in self.failing
        self.in_use += 1
        self.running[provider] += 1
        if failing:
            self.failing_in_use += 1
        return failing

    def _release(self, provider: str, failing: bool) -> None:
        self.in_use -= 1
        self.running[provider] -= 1
        if self.running[provider] <= 0:
            del self.running[provider]
        if failing:
            self.failing_in_use -= 1
        self._wake()

    def _wake(self) -> None:
        """Hand free slots to waiting providers, the least served first."""
        while True:
            candidates = [p for p in self._waiting if self._allowed(p)]
            if not candidates:
                return
            provider = min(candidates, key=lambda p: (self.running[p], self._first_arrival[p]))
            queue = self._waiting[provider]
            future = queue.popleft()
            if not queue:
                del self._waiting[provider]
                del self._first_arrival[provider]
            if not future.done():
                future.set_result(self._grant(provider))

    @asynccontextmanager
    async def slot(self, provider: str) -> AsyncIterator[None]:
        """Hold one delivery slot for ``provider`` while the block runs."""
        # No waiter is ever allowed to start once _wake has run, so one who is allowed
        # now jumps no queue by starting at once.
        if self._allowed(provider):
            failing = self._grant(provider)
        else:
            future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
            if provider not in self._waiting:
                self._waiting[provider] = deque()
                self._arrivals += 1
                self._first_arrival[provider] = self._arrivals
            self._waiting[provider].append(future)
            try:
                failing = await future
            except BaseException:
                if future.done() and not future.cancelled():
                    self._release(provider, future.result())  # granted, but we are leaving
                else:
                    future.cancel()
                    self._forget(provider, future)
                raise
        try:
            yield
        finally:
            self._release(provider, failing)

    def _forget(self, provider: str, future: asyncio.Future[bool]) -> None:
        queue = self._waiting.get(provider)
        if queue is not None and future in queue:
            queue.remove(future)
            if not queue:
                del self._waiting[provider]
                del self._first_arrival[provider]

    @property
    def waiting(self) -> int:
        return sum(len(q) for q in self._waiting.values())
