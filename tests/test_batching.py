"""The group-commit batcher: who shares a batch, and that every waiter gets its own answer."""

from __future__ import annotations

import asyncio

import pytest

from server.batching import Batcher


class Writer:
    """Records every batch; holds each one until released, like a slow database."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.release = asyncio.Event()
        self.fail: Exception | None = None

    async def write(self, items: list[int]) -> list[int | BaseException]:
        self.batches.append(items)
        await self.release.wait()
        if self.fail is not None:
            raise self.fail
        return [ValueError(f"odd {i}") if i % 2 else i * 10 for i in items]


async def _until(condition, seconds: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(seconds):
        while not condition():
            await asyncio.sleep(0)


def test_submissions_during_a_batch_share_the_next_one() -> None:
    async def scenario() -> None:
        writer = Writer()
        batcher: Batcher[int, int] = Batcher("t", writer.write, max_batch=3)
        first = asyncio.ensure_future(batcher.submit(0))
        await _until(lambda: len(writer.batches) == 1)
        rest = [asyncio.ensure_future(batcher.submit(i)) for i in (2, 4, 6, 8)]
        await asyncio.sleep(0)
        assert writer.batches == [[0]], "nothing else starts while a batch is in flight"
        writer.release.set()
        assert await first == 0
        assert await asyncio.gather(*rest) == [20, 40, 60, 80]
        assert writer.batches == [[0], [2, 4, 6], [8]], "queued items go together, max 3"

    asyncio.run(scenario())


def test_each_item_gets_its_own_result_or_error() -> None:
    async def scenario() -> None:
        writer = Writer()
        writer.release.set()
        batcher: Batcher[int, int] = Batcher("t", writer.write)
        results = await asyncio.gather(
            *(batcher.submit(i) for i in range(4)), return_exceptions=True
        )
        assert writer.batches == [[0, 1, 2, 3]]
        assert results[0] == 0 and results[2] == 20
        assert [str(results[1]), str(results[3])] == ["odd 1", "odd 3"]

    asyncio.run(scenario())


def test_a_failed_batch_fails_its_items_and_the_next_batch_still_runs() -> None:
    async def scenario() -> None:
        writer = Writer()
        writer.fail = ConnectionError("database down")
        batcher: Batcher[int, int] = Batcher("t", writer.write)
        doomed = asyncio.ensure_future(batcher.submit(0))
        await _until(lambda: len(writer.batches) == 1)
        writer.release.set()
        with pytest.raises(ConnectionError):
            await doomed
        writer.fail = None
        assert await batcher.submit(4) == 40

    asyncio.run(scenario())


def test_cancelling_the_batch_cancels_every_waiter() -> None:
    async def scenario() -> None:
        writer = Writer()
        batcher: Batcher[int, int] = Batcher("t", writer.write)
        waiting = asyncio.ensure_future(batcher.submit(0))
        await _until(lambda: len(writer.batches) == 1)
        queued = asyncio.ensure_future(batcher.submit(2))
        await asyncio.sleep(0)
        assert batcher._task is not None
        batcher._task.cancel()
        for future in (waiting, queued):
            with pytest.raises(asyncio.CancelledError):
                await future
        writer.release.set()
        assert await batcher.submit(6) == 60, "a new batch starts after the cancelled one"

    asyncio.run(scenario())
