"""Model instances: several engines of one model version, each with its own threads.

As Triton's ``instance_group``: ``--instances N`` loads the model N times; a
request (or a batch) runs on whichever instance is free. How many, with how
many threads and on which cores is ``placement``'s plan; on the CPU each
onnxruntime thread does not spin while it waits (measured on two cores: as many
or more requests than one instance of two threads, for less CPU per request;
see docs/serve.md). Instances run in threads of the server; with ``--instance-kind
process`` each runs in a worker process of its own (``process_instance``), which
decodes and runs the model there: a crash or a leak in the engine then costs one
instance, not the server (measured here: more CPU and memory per request, see
docs/serve.md).

With ``--lone-request-threads T`` the pool also holds a ``lone`` engine of T
threads: a request that is alone (every instance idle, no two requests held at
once for a while; the batcher decides) runs there on every core, and no
instance starts until it ends.

An instance whose model call fails with an unexpected error, or whose process
exits, is taken out of service: the requests it was running hear 503 at once, and a fresh engine is
loaded in its place (a few tries, then the model is marked failed). The pool
is ready while at least one instance runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, NamedTuple

import numpy as np

from graft.runtime.server.errors import DeadlineExceeded
from graft.runtime.server.worker import Encoded

log = logging.getLogger("graft.serve")

Runner = Callable[[np.ndarray], np.ndarray]
REPLACE_TRIES = 3
# the lone engine holds every core; past this many seconds in one call the instances
# take requests again, so one stuck call cannot stall the model
LONE_EXCLUSIVE_S = 1.0
ALONE_AFTER_S = 1.0  # a request counts as alone when no two have been held at once for this long
# onnxruntime's intra-op threads spin while they wait for work by default; with the
# cores shared by instances (and decoding) that spinning only takes CPU from the others
# (measured: about twice the CPU per request).
CPU_SESSION_CONFIG = {"session.intra_op.allow_spinning": "0"}


def pin_to(cores: tuple[int, ...] | None) -> None:
    """Keep the calling thread (and the threads it starts) on ``cores``."""
    if cores:
        with contextlib.suppress(AttributeError, OSError):
            os.sched_setaffinity(0, cores)


class Deferred(NamedTuple):
    """A request's images still to decode, by the instance that runs them: ``decode()`` in
    its thread, or ``encoded`` sent to its process."""

    encoded: Encoded
    decode: Callable[[], np.ndarray]

    @property
    def size(self) -> int:
        return len(self.encoded.images)


@dataclass
class BatchStats:
    """What one model execution did, for the metrics."""

    items: int
    requests: int
    compute_s: float
    queue_s: list[float]


class Company:
    """How many requests a model version holds at once, and since when one has been alone.

    A request is alone when it is the only one held and no two have been held at
    once for ``ALONE_AFTER_S``: then the pool may run it on every core.
    """

    def __init__(self):
        self.held = 0                          # requests submitted and not yet answered
        self.together_at = -ALONE_AFTER_S      # when two were last held at once (monotonic)

    def enter(self) -> None:
        self.held += 1
        if self.held > 1:
            self.together_at = time.monotonic()

    def leave(self) -> None:
        if self.held > 1:  # two were held until now
            self.together_at = time.monotonic()
        self.held -= 1

    def alone(self) -> bool:
        return self.held == 1 and time.monotonic() - self.together_at > ALONE_AFTER_S


class Instance:
    """One engine and the one thread that runs it (a batch: decode, then one model call)."""

    kind = "thread"
    pid: int | None = None   # the worker process, for instances in one

    def __init__(self, index: int, run: Runner, name: str, cores: tuple[int, ...] | None = None,
                 threads: int | None = None):
        self.index, self.run, self.cores, self.threads = index, run, cores, threads
        self.executor = ThreadPoolExecutor(1, thread_name_prefix=f"graft-{name}-{index}",
                                           initializer=pin_to, initargs=(cores,))
        self.state = "live"   # live | replacing | failed
        self.handed = 0       # batches handed to its thread and not yet answered
        self.since = 0.0      # when its running batch started (monotonic), while handed > 0
        self.heavy = False    # it runs a batch of several images: nothing is handed to it meanwhile
        self.error: str | None = None

    @property
    def busy(self) -> bool:
        return self.handed > 0

    def execute(self, parts: list, deadline: float | None) -> np.ndarray:
        """Probabilities for ``parts`` (pixel arrays, or ``Deferred`` images); runs in ``executor``."""
        arrays = [p.decode() if isinstance(p, Deferred) else p for p in parts]
        return self.run(arrays[0] if len(arrays) == 1 else np.concatenate(arrays))

    def run_awaited(self, parts: list, futures: list, deadline: float | None, late: str):
        """``execute`` in the instance's thread, unless no request waits any more (None) or
        their deadline has passed (504, saying ``late``): a request handed to a busy
        instance may wait a while."""
        if all(future.done() for future in futures):  # a read of the futures' state only
            return None
        if deadline is not None and time.monotonic() >= deadline:
            raise DeadlineExceeded(late)
        return self.execute(parts, deadline)

    def close(self) -> None:
        """Out of service: a call stuck in the thread keeps the thread, never the instance."""
        self.executor.shutdown(wait=False)

    def stop(self) -> None:
        """The server stops: wait for a running call (called off the event loop)."""
        self.executor.shutdown()


class InstancePool:
    """The instances of one model version; the batcher takes a free one, runs, gives it back.

    ``load(index)`` makes a fresh instance (an engine) in place of instance
    ``index``, one that failed. ``on_lost`` is called with a reason
    when an instance could not be replaced.
    """

    def __init__(self, instances: list[Instance], load: Callable[[int], Instance] | None = None,
                 name: str = "model", lone: Instance | None = None):
        self.name = name
        self.instances = instances
        self._load = load
        self.lone = lone           # an engine whose threads span the cores, for a request alone
        self.lone_runs = 0
        self._lone_since: float | None = None   # when the running lone call started
        self._freed: asyncio.Event | None = None
        self._replacing: set[asyncio.Task] = set()
        self.on_lost: Callable[[str], None] | None = None

    def start(self) -> None:
        self._freed = asyncio.Event()

    async def stop(self) -> None:
        for task in list(self._replacing):
            task.cancel()
        loop = asyncio.get_running_loop()
        for instance in [*self.instances, *([self.lone] if self.lone else [])]:
            await loop.run_in_executor(None, instance.stop)  # a running call finishes first

    @property
    def live(self) -> int:
        return sum(i.state == "live" for i in self.instances)

    @property
    def size(self) -> int:
        return len(self.instances)

    def describe(self) -> dict:
        """Instance states for /v2/models/NAME."""
        return {"count": self.size, "live": self.live, "kind": self.instances[0].kind,
                **({"cores": [list(i.cores) for i in self.instances]} if self.instances[0].cores else {}),
                **({"pids": [i.pid for i in self.instances]} if self.instances[0].pid else {}),
                "busy": sum(i.busy for i in self.instances if i.state == "live"),
                "failed": [{"instance": i.index, "state": i.state, "error": i.error}
                           for i in self.instances if i.state != "live"],
                **({"lone_request": {"threads": self.lone.threads, "state": self.lone.state,
                                     "runs": self.lone_runs, "error": self.lone.error}} if self.lone else {})}

    def problem(self) -> str | None:
        """Why no request can run now (no live instance), or None."""
        if self.live:
            return None
        errors = "; ".join(f"instance {i.index}: {i.error}" for i in self.instances)
        waiting = any(i.state == "replacing" for i in self.instances)
        return f"no instance is running ({errors}){'; being replaced' if waiting else ''}"

    async def acquire(self, depth: int | Callable[[], int] = 1,
                      alone: Callable[[], bool] | None = None) -> Instance:
        """The first free live instance, else (``depth`` 2) the busy one whose running
        request started first, waiting until there is one (only the collector calls this).

        A depth of 2 lets an instance's thread go from one request straight to the
        next, without waiting for the event loop to hand it over; an instance running
        a batch of several images (``heavy``) is never handed more. ``alone()`` says
        whether the request is the only one about; with every instance idle it then
        runs on the ``lone`` engine, whose threads take every core, so no instance
        starts meanwhile (for up to ``LONE_EXCLUSIVE_S``).
        """
        while True:
            lone_for = None if self._lone_since is None else time.monotonic() - self._lone_since
            if lone_for is None or lone_for > LONE_EXCLUSIVE_S:
                chosen = self._choose(depth, alone if lone_for is None else None)
                if chosen is not None:
                    return chosen
            self._freed.clear()
            if lone_for is not None and lone_for <= LONE_EXCLUSIVE_S:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._freed.wait(), LONE_EXCLUSIVE_S - lone_for + 0.001)
            else:
                await self._freed.wait()

    def _choose(self, depth: int | Callable[[], int], alone: Callable[[], bool] | None) -> Instance | None:
        live = [i for i in self.instances if i.state == "live"]
        if alone is not None and self.lone is not None and self.lone.state == "live" \
                and not any(i.handed for i in self.instances) and alone():
            self._lone_since, self.lone.handed = time.monotonic(), 1
            return self.lone
        free = [i for i in live if not i.handed]
        if free:
            free[0].handed, free[0].since = 1, time.monotonic()
            return free[0]
        depth = depth() if callable(depth) else depth
        waiting = [i for i in live if i.handed < depth and not i.heavy]
        if waiting:  # the one whose running request started first is likely to end first
            chosen = min(waiting, key=lambda i: i.since)
            chosen.handed += 1
            return chosen
        return None

    def release(self, instance: Instance) -> None:
        instance.handed = max(0, instance.handed - 1)
        instance.since = time.monotonic()  # its next handed request (if any) starts now
        if not instance.handed:
            instance.heavy = False
        if instance is self.lone:
            self._lone_since = None
            self.lone_runs += 1
        self._freed.set()

    def failed(self, instance: Instance, exc: BaseException) -> None:
        """Take ``instance`` out of service and load a replacement in the background."""
        if instance is self.lone:  # not replaced: requests alone run on the instances from now on
            self._lone_since, instance.handed, instance.state = None, 0, "failed"
            instance.error = f"{type(exc).__name__}: {exc}"[:300]
            instance.close()
            log.error("model %s: the engine for requests alone failed (%s); they run on the instances "
                      "from now on", self.name, instance.error)
            self._freed.set()
            return
        if instance.state != "live":  # a batch handed to it before it failed: replaced already
            return
        instance.handed, instance.state = 0, "replacing"
        instance.error = f"{type(exc).__name__}: {exc}"[:300]
        instance.close()
        log.error("model %s: instance %d failed (%s); replacing it", self.name, instance.index,
                  instance.error)
        task = asyncio.get_running_loop().create_task(self._replace(instance))
        self._replacing.add(task)
        task.add_done_callback(self._replacing.discard)

    async def _replace(self, old: Instance) -> None:
        loop, error = asyncio.get_running_loop(), old.error
        for attempt in range(1, REPLACE_TRIES + 1):
            if self._load is None:
                error = "no loader to replace it"
                break
            try:
                fresh = await loop.run_in_executor(None, self._load, old.index)
            except Exception as exc:  # a failed load is retried, then given up
                error = f"reloading failed: {type(exc).__name__}: {exc}"[:300]
                log.error("model %s: instance %d: %s (try %d of %d)", self.name, old.index, error,
                          attempt, REPLACE_TRIES)
                await asyncio.sleep(0.5 * attempt)
                continue
            self.instances[old.index] = fresh
            log.warning("model %s: instance %d replaced", self.name, old.index)
            self._freed.set()
            return
        old.state, old.error = "failed", error
        if self.on_lost is not None and not self.live:
            self.on_lost(f"every instance failed (instance {old.index}: {error})")
