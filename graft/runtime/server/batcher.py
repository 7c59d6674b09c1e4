"""The queue of one model version: requests wait in FIFO order for a free instance.

Requests wait in a bounded queue (a full queue answers 503). A collector task
waits for a free model instance (``instances.InstancePool``), then takes what is
queued, up to ``max_batch_size`` items (1 when batching is off: each request
runs alone); when the batch is not full and other requests for the same model
are still being read or decoded, it waits up to ``max_queue_delay`` for them. A
lone request is never delayed. The batch runs in that instance's thread (so the
event loop stays free, and the other instances keep running), and each request
gets its own rows back. When requests run alone, a busy instance running a
one-image request may also take the next one-image request (``HANDOFF_DEPTH``):
its thread then starts it the moment the running one ends instead of idling
until the event loop hands it over (measured on two cores: from 0.88x / 0.89x a
tuned peer's requests per second at 8 / 32 clients to 0.97x / 0.92x); a handed
request nobody waits for any more is skipped. A
request whose deadline passes while it is queued is answered 504; one whose
caller stops waiting (its client went away) leaves the queue at once. Requests
enter the queue only once their body is read and decoded, so a slow client
holds up nobody. A request that is alone (``Company``) may run on the pool's
``lone`` engine, on every core.

An instance whose model call raises an unexpected error (not a ``GraftError``)
is replaced; the requests it was running get 503.

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
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from graft.errors import GraftError
from graft.runtime.server.errors import DeadlineExceeded, ServerError, Unavailable
from graft.runtime.server.instances import BatchStats, Company, Deferred, Instance, InstancePool

log = logging.getLogger("graft.serve")
HANDOFF_DEPTH = 2  # requests handed to one instance's thread at once, when they run alone


@dataclass
class _Item:
    pixels: np.ndarray | Deferred
    deadline: float | None
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)

    @property
    def size(self) -> int:
        return self.pixels.size if isinstance(self.pixels, Deferred) else len(self.pixels)


class Batcher:
    """One queue for one model version, feeding its instances."""

    def __init__(self, run_batch: Callable[[np.ndarray], np.ndarray] | None = None, max_batch_size: int = 32,
                 max_queue_delay_s: float = 0.002, max_queue: int = 256, name: str = "model",
                 on_batch: Callable[[BatchStats], None] | None = None, pool: InstancePool | None = None):
        if pool is None and run_batch is None:
            raise ValueError("a Batcher needs run_batch (one instance) or a pool of instances")
        self.pool = pool or InstancePool([Instance(0, run_batch, name)], name=name)
        self.max_batch_size = max(1, int(max_batch_size))
        self.max_queue_delay_s = max(0.0, float(max_queue_delay_s))
        self.max_queue = max(1, int(max_queue))
        self.name = name
        self.on_batch = on_batch
        self._items: collections.deque[_Item] = collections.deque()
        self._gathering: list[_Item] = []  # taken off the queue, being gathered
        self._running: dict[asyncio.Task, list[_Item]] = {}
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._arriving = 0
        self.company = Company()  # requests held at once: is the next one alone?
        self.failure: str | None = None  # why the batcher stopped for good; None while it runs
        self.plan = None       # the InstancePlan it was made from (pools.make_batcher)
        self.decision: dict = {"enabled": self.max_batch_size > 1, "max_batch_size": self.max_batch_size,
                               "decided_by": "the caller"}  # whether requests are combined, and why

    # -- lifecycle ------------------------------------------------------------
    def start(self) -> None:
        self._wakeup = asyncio.Event()
        self.pool.start()
        self.pool.on_lost = self._lost
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
        await self.pool.stop()

    @property
    def queued(self) -> int:
        """Requests waiting: in the queue, or handed to a busy instance's thread behind its running one."""
        return len(self._items) + sum(max(0, i.handed - 1) for i in self.pool.instances if i.state == "live")

    @property
    def problem(self) -> str | None:
        """Why requests cannot run now (stopped for good, or no instance running), or None."""
        return self.failure or self.pool.problem()

    @property
    def ready(self) -> bool:
        """True while the collector runs (started, not stopped, not dead) with a live instance."""
        return self._task is not None and self.problem is None

    def _collector_done(self, task: asyncio.Task) -> None:
        if task.cancelled() or task.exception() is None:
            return
        self._died(task.exception())

    def _died(self, exc: BaseException) -> None:
        self.failure = f"the batch worker stopped ({type(exc).__name__}: {exc})"
        log.error("model %s: %s", self.name, self.failure, exc_info=exc)
        if self._task is not None:
            self._task.cancel()
        self._fail_held(self.unavailable())

    def _lost(self, reason: str) -> None:
        self.failure = reason
        self._fail_held(self.unavailable())

    def unavailable(self) -> Unavailable:
        """What a request (or a readiness probe) is told while no request can run."""
        if self.failure is not None:
            return Unavailable(f"model {self.name!r} is not ready: {self.failure}; restart the server")
        return Unavailable(f"model {self.name!r} is not ready: {self.pool.problem()}; retry shortly")

    def _fail_held(self, error: ServerError) -> None:
        held = [*self._gathering, *self._items, *(i for b in self._running.values() for i in b)]
        self._gathering = []
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

    @property
    def combines(self) -> bool:
        """Whether requests are combined into batches (then they arrive decoded)."""
        return self.max_batch_size > 1

    async def submit(self, pixels: np.ndarray | Deferred, deadline: float | None = None) -> tuple[np.ndarray, float]:
        """Queue ``pixels`` (n, H, W, 3), or images to decode; return (probabilities (n, C), seconds queued)."""
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
        self.company.enter()
        self._wakeup.set()
        try:
            return await asyncio.wait_for(asyncio.shield(item.future), remaining)
        except asyncio.TimeoutError:
            self._abandon(item)
            raise DeadlineExceeded(_late(self.name, "while queued or running")) from None
        except asyncio.CancelledError:  # the caller stopped waiting (e.g. its client went away)
            self._abandon(item)
            raise
        finally:
            self.company.leave()

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
            # FIFO: the queue's head goes to the first free instance; a one-image request that
            # runs alone may also wait in a busy one's thread (behind another one-image request),
            # to start the moment the running one ends
            instance = await self.pool.acquire(depth=self._depth, alone=self._alone)
            self._gathering = []
            batch = await self._gather(self._gathering)
            self._gathering = []
            batch = [item for item in batch if not item.future.done()]  # abandoned while gathering
            if not batch:
                self.pool.release(instance)
                continue
            if sum(item.size for item in batch) > 1:
                instance.heavy = True  # nothing is handed to wait behind it
            task = asyncio.get_running_loop().create_task(self._execute(instance, batch))
            self._running[task] = batch
            task.add_done_callback(self._executed)

    def _depth(self) -> int:
        """How many batches an instance may hold for the request at the head (1: only a free one)."""
        if self.combines or not self._items or self._items[0].size != 1:
            return 1
        return HANDOFF_DEPTH

    def _alone(self) -> bool:
        """Whether the request at the head is the only one about, and has been for a while:
        then an idle pool may run it on every core (``InstancePool.lone``)."""
        return self._arriving == 0 and not self.combines and self.company.alone()

    def _executed(self, task: asyncio.Task) -> None:
        self._running.pop(task, None)
        if not task.cancelled() and task.exception() is not None and self.failure is None:
            self._died(task.exception())

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

    async def _execute(self, instance: Instance, batch: list[_Item]) -> None:
        start = time.perf_counter()

        deadlines = [item.deadline for item in batch]
        deadline = None if None in deadlines else max(deadlines)
        try:  # in the instance's thread: decode what is still encoded, then the model call
            probs = await asyncio.get_running_loop().run_in_executor(
                instance.executor, instance.run_awaited, [item.pixels for item in batch],
                [item.future for item in batch], deadline, _late(self.name, "while it waited for its instance"))
            if probs is None:  # every request left while it waited in the instance's thread
                self.pool.release(instance)
                return
        except GraftError as exc:  # the request's own fault: every request in the batch hears why
            self.pool.release(instance)
            self._answer(batch, exc if isinstance(exc, ServerError) else ServerError(f"inference failed: {exc}"))
            return
        except Exception as exc:  # the instance broke: replace it, tell its requests at once
            self.pool.failed(instance, exc)
            what, then = ((f"instance {instance.index}", "it is being replaced") if instance is not self.pool.lone
                          else ("the engine for requests alone", "they run on the instances now"))
            self._answer(batch, Unavailable(f"model {self.name!r}: {what} failed while running this request "
                                            f"({type(exc).__name__}: {exc}); {then}, retry"[:400]))
            return
        self.pool.release(instance)
        compute_s = time.perf_counter() - start
        offset = 0
        for item in batch:
            rows = probs[offset:offset + item.size]
            offset += item.size
            if not item.future.done():
                item.future.set_result((rows, start - item.enqueued))
        if self.on_batch is not None:
            self.on_batch(BatchStats(offset, len(batch), compute_s, [start - i.enqueued for i in batch]))

    @staticmethod
    def _answer(batch: list[_Item], error: ServerError) -> None:
        for item in batch:
            if not item.future.done():
                item.future.set_exception(error)


def _late(name: str, where: str) -> str:
    return f"model {name!r}: the request passed its deadline {where}; raise --timeout-ms or retry"
