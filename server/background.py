"""Background work on the IOLoop: tasks that shutdown can wait for, and periodic rounds
that never overlap themselves."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from tornado.ioloop import PeriodicCallback

from server.errors import is_unavailable

log = logging.getLogger("cashout.background")


class Background:
    def __init__(self, name: str):
        self.name = name
        self._tasks: set[asyncio.Task[Any]] = set()
        self._periodic: PeriodicCallback | None = None
        self._running = False

    def spawn(self, coro: Awaitable[Any]) -> None:
        """Run ``coro`` in the background, remembered so ``stop`` can wait for it."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(self._log_failure)

    def every(self, seconds: float, round_: Callable[[], Awaitable[None]]) -> None:
        """Run ``round_`` now and every ``seconds``; a round still running is not doubled,
        and a failed round (say, the database is down) is logged and tried next time."""

        async def guarded() -> None:
            if self._running:
                return
            self._running = True
            try:
                await round_()
            except Exception as exc:
                log.warning("%s round failed: %s", self.name, type(exc).__name__)
            finally:
                self._running = False

        self.spawn(guarded())
        self._periodic = PeriodicCallback(lambda: self.spawn(guarded()), seconds * 1000)
        self._periodic.start()

    async def stop(self, deadline: float) -> None:
        """Stop the periodic rounds and give running tasks until ``deadline`` seconds."""
        if self._periodic is not None:
            self._periodic.stop()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=deadline)

    def _log_failure(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        if is_unavailable(exc):  # an outage, not a bug: the next round picks the work up
            log.warning("%s work stopped, database unavailable: %s", self.name, type(exc).__name__)
            return
        log.error("%s work failed", self.name, exc_info=exc)


class InFlight:
    """Counts requests being answered, so shutdown can wait for them to finish."""

    def __init__(self) -> None:
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> None:
        self.count += 1
        self._idle.clear()

    def leave(self) -> None:
        self.count = max(0, self.count - 1)
        if self.count == 0:
            self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except TimeoutError:
            return False
