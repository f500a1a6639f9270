"""Cross-request batching: requests that arrive close together run through the pipeline at once.

A :class:`MicroBatcher` owns a queue. The first item that arrives opens a batch; the batcher then
waits up to ``window_s`` for more (never past ``max_batch`` items), and hands the whole batch to
``fn`` in a worker thread, so that a batch-first pipeline makes one encoder call for all of them.
While a batch runs, new requests queue up and form the next batch at once. ``fn`` returns one
result per item; an item's result may be an exception, which only that item's caller sees.
With ``window_s=0`` and ``max_batch=1`` requests run one at a time (the unbatched baseline).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

__all__ = ["BatchStats", "MicroBatcher"]

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

_STOP = object()


@dataclass
class BatchStats:
    """Counts kept by a batcher (read them for the health endpoint and the benchmark)."""

    batches: int = 0
    items: int = 0
    max_batch_seen: int = 0
    sizes: dict[int, int] = field(default_factory=dict)

    def add(self, n: int) -> None:
        self.batches += 1
        self.items += n
        self.max_batch_seen = max(self.max_batch_seen, n)
        self.sizes[n] = self.sizes.get(n, 0) + 1


class MicroBatcher(Generic[T, R]):
    """Collect items from concurrent callers into batches for one function.

    Args:
        fn: Runs a batch: ``fn(items) -> results`` (same length; a result may be an exception).
            It runs in ``executor`` (one batch at a time per batcher).
        window_s: How long to wait for company after the first item of a batch.
        max_batch: Most items per batch.
        executor: Where ``fn`` runs (share a one-thread executor between batchers to keep the
            pipeline single-threaded).
        name: Name used in the logs.
    """

    def __init__(
        self,
        fn: Callable[[list[T]], Sequence[R | BaseException]],
        *,
        window_s: float,
        max_batch: int,
        executor: Executor | None = None,
        name: str = "batcher",
    ) -> None:
        if max_batch < 1 or window_s < 0:
            raise ValueError("max_batch must be >= 1 and window_s >= 0")
        self.fn, self.window_s, self.max_batch, self.executor, self.name = fn, window_s, max_batch, executor, name
        self.stats = BatchStats()
        self._queue: asyncio.Queue[Any] | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    async def start(self) -> None:
        """Start collecting (in the running event loop)."""
        if self._task is None:
            self._queue = asyncio.Queue()
            self._closing = False
            self._task = asyncio.create_task(self._loop(), name=f"ctxkit-{self.name}")

    async def close(self) -> None:
        """Run what is queued, then stop."""
        if self._task is None or self._queue is None:
            return
        self._closing = True
        await self._queue.put(_STOP)
        await self._task
        self._task = None

    async def submit(self, item: T) -> R:
        """Queue ``item`` and wait for its result (its exception is raised here)."""
        if self._queue is None or self._task is None or self._task.done() or self._closing:
            raise RuntimeError(f"{self.name} is not running")
        fut: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        await self._queue.put((item, fut))
        return await fut

    async def _collect(self, first: tuple[T, asyncio.Future[R]]) -> tuple[list[tuple[T, asyncio.Future[R]]], bool]:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        items = [first]
        deadline = loop.time() + self.window_s
        while len(items) < self.max_batch:
            left = deadline - loop.time()
            try:
                nxt = self._queue.get_nowait() if left <= 0 else await asyncio.wait_for(self._queue.get(), left)
            except (asyncio.QueueEmpty, TimeoutError):
                break
            if nxt is _STOP:
                return items, True
            items.append(nxt)
        return items, False

    async def _loop(self) -> None:
        assert self._queue is not None
        queue, loop = self._queue, asyncio.get_running_loop()
        while True:
            first = await queue.get()
            if first is _STOP:
                if queue.empty():
                    return
                await queue.put(_STOP)  # what was queued before the stop still runs
                continue
            batch, saw_stop = await self._collect(first)
            if saw_stop:
                await queue.put(_STOP)
            live = [(item, fut) for item, fut in batch if not fut.done()]  # timed-out callers left
            if not live:
                continue
            self.stats.add(len(live))
            t0 = time.perf_counter()
            try:
                results = await loop.run_in_executor(self.executor, self.fn, [item for item, _ in live])
                if len(results) != len(live):
                    raise RuntimeError(f"{self.name}: {len(results)} results for {len(live)} items")
            except Exception as exc:  # noqa: BLE001 - every caller of the batch hears about it
                results = [exc] * len(live)
            log.debug("%s: batch of %d in %.1f ms", self.name, len(live), 1000 * (time.perf_counter() - t0))
            for (_, fut), res in zip(live, results, strict=True):
                if fut.done():
                    continue
                if isinstance(res, BaseException):
                    fut.set_exception(res)
                else:
                    fut.set_result(res)
