"""Dynamic batching: gather requests into one model call, run it off the event loop.

Requests wait in a bounded queue (a full queue answers 503). A collector task
takes what is queued, up to ``max_batch_size`` items; when the batch is not full
and other requests for the same model are still being read or decoded, it waits
up to ``max_queue_delay`` for them. A lone request is never delayed. The batch
runs in a worker thread (one per model version, so the event loop stays free),
and each request gets its own rows back. A request whose deadline passes while
it is queued is dropped from the batch and answered 504; one whose caller stops
waiting (its client went away) leaves the queue at once.

If the collector itself dies (an exception escapes it), the batcher records why,
answers everything it holds and every later request 503 at once, and reports
itself not ready, so the server's readiness turns 503 and it gets restarted.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from graft.runtime.server.errors import DeadlineExceeded, ServerError, Unavailable

log = logging.getLogger("graft.serve")


@dataclass
class BatchStats:
    """What one model execution did, for the metrics."""

    items: int
    requests: int
    compute_s: float
    queue_s: list[float]


@dataclass
class _Item:
    pixels: np.ndarray
    deadline: float | None
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)

    @property
    def size(self) -> int:
        return len(self.pixels)


class Batcher:
    """One queue and one worker thread for one model version."""

    def __init__(self, run_batch: Callable[[np.ndarray], np.ndarray], max_batch_size: int = 32,
                 max_queue_delay_s: float = 0.002, max_queue: int = 256, name: str = "model",
                 on_batch: Callable[[BatchStats], None] | None = None):
        self.run_batch = run_batch
        self.max_batch_size = max(1, int(max_batch_size))
        self.max_queue_delay_s = max(0.0, float(max_queue_delay_s))
        self.max_queue = max(1, int(max_queue))
        self.name = name
        self.on_batch = on_batch
        self._items: collections.deque[_Item] = collections.deque()
        self._batch: list[_Item] = []  # taken off the queue: being gathered or running
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._arriving = 0
        self.failure: str | None = None  # why the collector died; None while it runs

    # -- lifecycle ------------------------------------------------------------
    def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"graft-{self.name}")
        self._task = asyncio.get_running_loop().create_task(self._collect())
        self._task.add_done_callback(self._collector_done)

    async def stop(self) -> None:
        """Stop collecting; answer 503 to every request still held (queued or in a batch)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):  # a dead one was logged
                await task
        self._fail_held(Unavailable(f"model {self.name!r}: the server is shutting down"))
        if self._executor is not None:  # a running batch finishes in its thread; wait off the loop
            await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown)

    @property
    def queued(self) -> int:
        return len(self._items)

    @property
    def ready(self) -> bool:
        """True while the collector runs (started, not stopped, not dead)."""
        return self._task is not None and self.failure is None

    def _collector_done(self, task: asyncio.Task) -> None:
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        self.failure = f"the batch worker stopped ({type(exc).__name__}: {exc})"
        log.error("model %s: %s", self.name, self.failure, exc_info=exc)
        self._fail_held(self.unavailable())

    def unavailable(self) -> Unavailable:
        """What a request (or a readiness probe) is told once the batch worker has stopped."""
        return Unavailable(f"model {self.name!r} is not ready: {self.failure}; restart the server")

    def _fail_held(self, error: ServerError) -> None:
        held, self._batch = [*self._batch, *self._items], []
        self._items.clear()
        for item in held:
            if not item.future.done():
                item.future.set_exception(error)

    # -- requests -------------------------------------------------------------
    @contextlib.contextmanager
    def arriving(self):
        """Mark a request that is being read or decoded, so a forming batch waits for it."""
        self._arriving += 1
        try:
            yield
        finally:
            self._arriving -= 1
            if self._wakeup is not None:
                self._wakeup.set()

    async def submit(self, pixels: np.ndarray, deadline: float | None = None) -> tuple[np.ndarray, float]:
        """Queue ``pixels`` (n, H, W, 3); return (probabilities (n, C), seconds spent queued)."""
        if self.failure is not None:
            raise self.unavailable()
        if self._task is None:
            raise Unavailable(f"model {self.name!r} is not running")
        if len(self._items) >= self.max_queue:
            raise Unavailable(f"model {self.name!r}: the queue is full ({self.max_queue} requests "
                              "waiting); retry later")
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            raise DeadlineExceeded(_late(self.name, "before it was queued"))
        item = _Item(pixels, deadline, asyncio.get_running_loop().create_future())
        self._items.append(item)
        self._wakeup.set()
        try:
            return await asyncio.wait_for(asyncio.shield(item.future), remaining)
        except asyncio.TimeoutError:
            self._abandon(item)
            raise DeadlineExceeded(_late(self.name, "while queued or running")) from None
        except asyncio.CancelledError:  # the caller stopped waiting (e.g. its client went away)
            self._abandon(item)
            raise

    def _abandon(self, item: _Item) -> None:
        """Nobody waits for ``item`` any more: leave the queue now (a running batch still runs)."""
        item.future.cancel()
        with contextlib.suppress(ValueError):
            self._items.remove(item)

    # -- the collector --------------------------------------------------------
    async def _collect(self) -> None:
        while True:
            if not self._items:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            self._batch = []
            batch = await self._gather(self._batch)
            if batch:
                await self._execute(batch)
            self._batch = []

    async def _gather(self, batch: list[_Item]) -> list[_Item]:
        count = self._take(batch, 0)
        limit = time.monotonic() + self.max_queue_delay_s
        while count < self.max_batch_size and self._arriving > 0:
            remaining = limit - time.monotonic()
            if remaining <= 0:
                break
            self._wakeup.clear()
            if not self._items:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
            before = count
            count = self._take(batch, count)
            if count == before and self._items:
                break  # the next request does not fit in this batch
        return batch

    def _take(self, batch: list[_Item], count: int) -> int:
        """Move queued items into ``batch`` while they fit; drop expired or abandoned ones."""
        now = time.monotonic()
        while self._items:
            item = self._items[0]
            if item.future.done():
                self._items.popleft()
                continue
            if item.deadline is not None and item.deadline <= now:
                self._items.popleft()
                item.future.set_exception(DeadlineExceeded(_late(self.name, "while queued")))
                continue
            if batch and count + item.size > self.max_batch_size:
                break
            batch.append(self._items.popleft())
            count += item.size
        return count

    async def _execute(self, batch: list[_Item]) -> None:
        batch = [item for item in batch if not item.future.done()]  # abandoned while gathering
        if not batch:
            return
        start = time.perf_counter()
        pixels = batch[0].pixels if len(batch) == 1 else np.concatenate([i.pixels for i in batch])
        loop = asyncio.get_running_loop()
        try:
            probs = await loop.run_in_executor(self._executor, self.run_batch, pixels)
        except Exception as exc:  # the engine failed: every request in the batch hears why
            error = exc if isinstance(exc, ServerError) else ServerError(f"inference failed: {exc}")
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(error)
            return
        compute_s = time.perf_counter() - start
        offset = 0
        for item in batch:
            rows = probs[offset:offset + item.size]
            offset += item.size
            if not item.future.done():
                item.future.set_result((rows, start - item.enqueued))
        if self.on_batch is not None:
            self.on_batch(BatchStats(len(pixels), len(batch), compute_s,
                                     [start - i.enqueued for i in batch]))


def _late(name: str, where: str) -> str:
    return f"model {name!r}: the request passed its deadline {where}; raise --timeout-ms or retry"
