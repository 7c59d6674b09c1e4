"""Batching where it pays: measure at start-up whether one call on many images beats many calls.

Batching requests together costs latency (a request waits for others) and
memory (the engine's buffers grow with the batch); it is worth that only when
a batched call spends clearly less time per image than single calls. On a GPU
it does; on a small CPU, running each request on its own instance does as
well. ``decide`` times the model on one instance, single images against a batch,
interleaved so that drifting load hits both alike, takes the fastest time of
each (on a shared machine, other work only ever adds time), and batches only
when the batch is at least ``PAYS`` times cheaper per image. ``--max-batch-size`` skips
the measurement.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

import numpy as np

log = logging.getLogger("graft.serve")

PAYS = 1.25          # batching must make each image this many times cheaper
PROBE_BATCH = 8      # the batch size measured against single images
ROUNDS = 5           # interleaved rounds (fewer when the time budget runs out)
BUDGET_S = 3.0       # most wall time the measurement may take


def fixed(max_batch_size: int) -> dict:
    """The decision when ``--max-batch-size`` was given."""
    return {"enabled": max_batch_size > 1, "max_batch_size": max_batch_size,
            "decided_by": "--max-batch-size"}


def decide(run: Callable[[np.ndarray], np.ndarray], pixels: np.ndarray, max_batch_size: int,
           fixed_batch: int | None = None, budget_s: float = BUDGET_S) -> dict:
    """Whether to batch: ``run`` is one instance's model call, ``pixels`` one sample image (1, H, W, 3).

    Returns what /v2/models/NAME shows: ``enabled``, ``max_batch_size`` (1 when
    off), ``decided_by`` and the measured milliseconds per image.
    """
    if fixed_batch is not None:
        return {"enabled": False, "max_batch_size": 1,
                "decided_by": f"the model takes a fixed batch of {fixed_batch}"}
    size = min(PROBE_BATCH, max_batch_size)
    if size < 2:
        return fixed(1)
    batch = np.repeat(pixels[:1], size, axis=0)
    run(pixels[:1]), run(batch)  # warm up: first calls allocate
    single, batched = [], []
    deadline = time.monotonic() + budget_s
    for _ in range(ROUNDS):
        single += [_seconds(run, pixels[:1]) for _ in range(size)]
        batched.append(_seconds(run, batch) / size)
        if time.monotonic() > deadline:
            break
    one, many = min(single), min(batched)
    speedup = one / many if many > 0 else float("inf")
    enabled = speedup >= PAYS
    decision = {"enabled": enabled, "max_batch_size": max_batch_size if enabled else 1,
                "decided_by": "measurement at start-up",
                "ms_per_image": {"batch_1": round(one * 1e3, 3), f"batch_{size}": round(many * 1e3, 3)},
                "speedup": round(speedup, 2), "pays_from": PAYS, "rounds": len(batched)}
    return decision


def _seconds(run, pixels: np.ndarray) -> float:
    start = time.perf_counter()
    run(pixels)
    return time.perf_counter() - start


def summary(name: str, decision: dict) -> str:
    """One log line: the decision and its numbers."""
    state = f"on (up to {decision['max_batch_size']} images)" if decision["enabled"] else "off"
    line = f"model {name}: batching {state}, decided by {decision['decided_by']}"
    if "speedup" in decision:
        times = ", ".join(f"{k.replace('_', ' ')} {v} ms" for k, v in decision["ms_per_image"].items())
        line += (f": per image {times}; a batch is {decision['speedup']}x cheaper per image "
                 f"(batching pays from {decision['pays_from']}x)")
    return line
