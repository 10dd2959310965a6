"""Judge batches formed when the backend has room, not before.

A judge replica's backend takes one batch at a time (a local engine) or a
few (a function or API judge: ``judge.concurrent_batches``). Requests wait in
one queue; each time the backend has room, the next batch is whatever waits
then (up to ``max_batch_size``, after at most ``batch_wait_s`` for it to
fill), so a request that arrives while a batch runs joins the next full
batch instead of a small one frozen early. A request whose caller gave up
while it waited (its future cancelled) is left out, uncomputed.

Several batchers may share one ``slots`` semaphore: scoring and classifying
then take turns on the same engine.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class Batcher(Generic[Item, Result]):
    """``await batcher(item)``: ``run`` scores a batch of items, one result per item, in order."""

    def __init__(
        self,
        run: Callable[[list[Item]], Awaitable[list[Result]]],
        *,
        max_batch_size: int,
        batch_wait_s: float,
        slots: asyncio.Semaphore,
    ):
        self.run, self.max_batch_size, self.batch_wait_s, self.slots = run, max_batch_size, batch_wait_s, slots
        self.waiting: collections.deque[tuple[Item, asyncio.Future]] = collections.deque()
        self.arrived = asyncio.Event()
        self.dropped = 0
        """Items whose caller gave up before their batch started: never computed."""
        self.sizes: collections.Counter[int] = collections.Counter()
        """Batches run, by size."""
        self.seconds = 0.0
        """Seconds the batches took, summed: the backend's own time per batch, without the queue."""
        self._drain: asyncio.Task | None = None
        self._running: set[asyncio.Task] = set()

    async def __call__(self, item: Item) -> Result:
        future = asyncio.get_running_loop().create_future()
        self.waiting.append((item, future))
        self.arrived.set()
        if self._drain is None or self._drain.done():
            self._drain = asyncio.create_task(self._form_batches())
        return await future  # a caller's cancellation cancels the future: the batch leaves it out

    async def _form_batches(self) -> None:
        while True:
            while not self._live():
                self.arrived.clear()
                await self.arrived.wait()
            await self.slots.acquire()
            try:
                await self._fill()
                batch = self._take()
            except BaseException:
                self.slots.release()
                raise
            if not batch:
                self.slots.release()
                continue
            task = asyncio.create_task(self._run(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    def _live(self) -> int:
        """Waiting items whose caller still waits (cancelled ones are counted and let go)."""
        while self.waiting and self.waiting[0][1].done():
            self.waiting.popleft()
            self.dropped += 1
        return sum(not future.done() for _, future in self.waiting)

    async def _fill(self) -> None:
        """Wait up to ``batch_wait_s`` (from now: the backend has room) for a full batch."""
        deadline = time.monotonic() + self.batch_wait_s
        while self._live() < self.max_batch_size and (left := deadline - time.monotonic()) > 0:
            self.arrived.clear()
            try:
                await asyncio.wait_for(self.arrived.wait(), left)
            except asyncio.TimeoutError:
                break

    def _take(self) -> list[tuple[Item, asyncio.Future]]:
        batch = []
        while self.waiting and len(batch) < self.max_batch_size:
            item, future = self.waiting.popleft()
            if future.done():
                self.dropped += 1
            else:
                batch.append((item, future))
        return batch

    async def _run(self, batch: list[tuple[Item, asyncio.Future]]) -> None:
        self.sizes[len(batch)] += 1
        start = time.monotonic()
        try:
            results = await self.run([item for item, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"judge batch returned {len(results)} results for {len(batch)} items")
            for (_, future), result in zip(batch, results):
                if not future.done():
                    future.set_result(result)
        except Exception as e:  # noqa: BLE001 - every caller of the batch gets the error, the batcher lives on
            for _, future in batch:
                if not future.done():
                    future.set_exception(e)
        finally:
            self.seconds += time.monotonic() - start
            self.slots.release()
