"""Group commit: requests that arrive while one batch is at the database share the next one.

The embedded database takes a few hundred writes a second, and each driver round trip costs
the server CPU too, so under load one round trip per batch instead of one per request is what
keeps either from being the bottleneck. A lone request is not delayed: its batch starts on the
next turn of the event loop. Every batch starts after all of its items were submitted, so an
item never sees older data than an unbatched call made at the same moment would.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

# Writes one batch; answers one result or exception per item, in order.
BatchWriter = Callable[[list[T]], Awaitable[Sequence["R | BaseException"]]]


class Batcher(Generic[T, R]):
    """At most one batch in flight; everything submitted meanwhile waits for the next."""

    def __init__(
        self,
        name: str,
        write: BatchWriter[T, R],
        *,
        max_batch: int = 256,
        observe: Callable[[str, int], None] | None = None,
    ) -> None:
        self.name = name
        self._write = write
        self._max_batch = max_batch
        self._observe = observe
        self._queue: list[tuple[T, asyncio.Future[R]]] = []
        self._task: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        if self._task is None:
            self._task = asyncio.create_task(self._drain(), name=f"batch:{self.name}")
        return await future

    async def _drain(self) -> None:
        batch: list[tuple[T, asyncio.Future[R]]] = []
        try:
            while self._queue:
                batch = self._queue[: self._max_batch]
                del self._queue[: self._max_batch]
                if self._observe is not None:
                    self._observe(self.name, len(batch))
                try:
                    results: Sequence[R | BaseException] = await self._write(
                        [item for item, _ in batch]
                    )
                    if len(results) != len(batch):  # pragma: no cover - a writer bug
                        raise RuntimeError(
                            f"{self.name}: {len(results)} results for {len(batch)} items"
                        )
                except Exception as exc:  # every item of the batch shares the failure
                    results = [exc] * len(batch)
                for (_, future), result in zip(batch, results, strict=True):
                    if future.done():
                        continue
                    if isinstance(result, BaseException):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
                batch = []
        except BaseException:
            # Cancelled (shutdown): nobody may wait forever on a batch that will not run.
            for _, future in batch + self._queue:
                if not future.done():
                    future.cancel()
            self._queue.clear()
            raise
        finally:
            self._task = None
