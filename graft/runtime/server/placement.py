"""Where a model version's instances run: how many, with how many threads each, on which cores.

As Triton's ``instance_group``: ``plan_instances`` turns ``--instances``,
``--model-threads``, ``--instance-kind`` and ``--pin-cores`` into an
``InstancePlan``. On the CPU the default fills the cores without
oversubscribing them: one instance per core this process may use, each with
one engine thread; on a GPU one instance (batching keeps it busy).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

GPU_DEVICES = ("cuda", "tensorrt")
THREADS_PER_INSTANCE = 1  # the CPU default: one core per instance


def usable_cores() -> int:
    """How many cores this process may run on (its affinity mask, not the machine's count)."""
    return len(core_ids())


def core_ids() -> list[int]:
    """The cores this process may run on, by number."""
    with contextlib.suppress(AttributeError, OSError):
        return sorted(os.sched_getaffinity(0)) or [0]
    return list(range(max(1, os.cpu_count() or 1)))


@dataclass(frozen=True)
class InstancePlan:
    """How many instances of each model version, with how many engine threads each, and where."""

    count: int
    threads: int | None   # None: the engine's own default (a GPU session)
    reason: str           # how the numbers were chosen, for the log and /v2/models/NAME
    warning: str | None = None
    kind: str = "thread"  # "process": each instance in a worker process; "thread": in the server's
    cores: tuple[tuple[int, ...], ...] | None = None   # instance i's cores, when pinned


def plan_instances(instances: int | None, threads: int | None, device: str,
                   cores: int | None = None, kind: str = "thread", pin: bool = False) -> InstancePlan:
    """Instances, threads per instance and their kind for ``device`` ("cpu", "cuda", ...).

    ``instances`` None means auto: on a GPU one; on the CPU ``cores // threads``
    with one thread per instance unless ``threads`` says otherwise. More
    instances x threads than cores is allowed, with a warning that says why it
    does not help. ``kind``: "thread" (in the server's process) or "process".
    ``pin`` keeps each CPU instance on cores of its own, when they go round.
    """
    ids = list(range(cores)) if cores else core_ids()
    plan = _count(instances, threads, device, len(ids))
    reason = plan.reason + (", each in a worker process" if kind == "process" else ", in the server's threads")
    pinned = None
    if pin and device not in GPU_DEVICES:
        step = plan.threads or 1
        if plan.count * step <= len(ids):
            pinned = tuple(tuple(ids[i * step:(i + 1) * step]) for i in range(plan.count))
            reason += ", pinned to cores " + " | ".join(",".join(map(str, c)) for c in pinned)
        else:
            reason += ", not pinned (more instances x threads than cores)"
    return InstancePlan(plan.count, plan.threads, reason, plan.warning, kind, pinned)


def _count(instances: int | None, threads: int | None, device: str, cores: int) -> InstancePlan:
    if device in GPU_DEVICES:
        count = instances or 1
        return InstancePlan(count, threads, f"{count} instance(s) on {device}"
                            + ("" if instances else " (auto: one per GPU; batching keeps it busy)"))
    if instances is None:
        threads = threads or min(THREADS_PER_INSTANCE, cores)
        count = max(1, cores // threads)
        return InstancePlan(count, threads, f"auto: {count} instance(s) x {threads} thread(s) "
                            f"for {cores} core(s)")
    threads = threads or max(1, cores // instances)
    warning = None
    if instances * threads > cores:
        warning = (f"{instances} instance(s) x {threads} thread(s) oversubscribe the {cores} core(s) "
                   "this process may use: they take turns on the cores, adding memory and "
                   "latency but no throughput; use --instances auto")
    return InstancePlan(instances, threads, f"{instances} instance(s) x {threads} thread(s) on "
                        f"{cores} core(s)", warning)
