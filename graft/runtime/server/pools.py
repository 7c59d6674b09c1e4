"""Each model version's instances and batching, made from the server's settings.

``make_batcher`` loads the instances ``plan_instances`` asks for (every one its
own engine from the model file the repository loaded, checked against the same
sha256) and puts a batcher in front of them. ``decide_batching`` settles, at
start-up, whether that batcher combines requests (see ``batch_probe``).
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import logging
from pathlib import Path
from typing import Callable

import numpy as np

from graft.errors import IntegrityError
from graft.runtime.classifier import Classifier
from graft.runtime.engines import open_engine
from graft.runtime.server import batch_probe
from graft.runtime.server.batcher import Batcher
from graft.runtime.server.config import ServerConfig
from graft.runtime.server.instances import (CPU_SESSION_CONFIG, GPU_DEVICES, InstancePlan,
                                            InstancePool, plan_instances)
from graft.runtime.server.repository import ModelEntry

log = logging.getLogger("graft.serve")


def entry_plan(entry: ModelEntry, config: ServerConfig) -> InstancePlan:
    return plan_instances(config.instances, config.model_threads, entry.classifier.device)


def load_instance(classifier: Classifier, plan: InstancePlan, device: str, spin: bool = False) -> Classifier:
    """A copy of ``classifier`` with an engine of its own (own session, own threads)."""
    source = Path(classifier.source)
    data = source.read_bytes()
    if classifier.sha256 and hashlib.sha256(data).hexdigest() != classifier.sha256:
        raise IntegrityError(f"{source}: the model file changed since the server loaded it; "
                             "restart the server to serve the new file")
    options = {}
    if source.suffix.lower() == ".onnx" and classifier.device not in GPU_DEVICES and not spin:
        options["session_config"] = CPU_SESSION_CONFIG
    clone = copy.copy(classifier)
    clone.engine = open_engine(source, device=device, threads=plan.threads, model_bytes=data, **options)
    return clone


def make_batcher(entry: ModelEntry, config: ServerConfig, on_batch=None) -> Batcher:
    """The batcher of one model version, with its instances loaded (batching off until decided)."""
    plan = entry_plan(entry, config)
    name = f"{entry.name}:{entry.version}"
    limit = config.batch_limit

    def load(index: int) -> Callable[[np.ndarray], np.ndarray]:
        clone = load_instance(entry.classifier, plan, config.device, config.spin_wait)
        run = lambda pixels: clone.predict_pixels(pixels, limit)  # noqa: E731
        run.engine = clone.engine
        return run

    runners = [load(index) for index in range(plan.count)]
    entry.classifier.engine = runners[0].engine  # the repository's own engine is not kept
    pool = InstancePool(runners, load, name=name)
    batcher = Batcher(max_batch_size=1, max_queue_delay_s=config.max_queue_delay_ms / 1000,
                      max_queue=config.max_queue, name=name, on_batch=on_batch, pool=pool)
    batcher.plan = plan
    batcher.decision = {"enabled": False, "max_batch_size": 1, "decided_by": "pending"}
    return batcher


def settle(entry: ModelEntry, config: ServerConfig) -> dict:
    """Decide (once) whether ``entry``'s batcher combines requests; log the plan and the decision."""
    batcher = entry.batcher
    if batcher.decision.get("decided_by") != "pending":
        return batcher.decision
    name = f"{entry.name}:{entry.version}"
    log.info("model %s: %s", name, batcher.plan.reason)
    if batcher.plan.warning:
        log.warning("model %s: %s", name, batcher.plan.warning)
    if config.max_batch_size is None:
        batcher.decision = _measure(entry, config)
    else:
        batcher.decision = batch_probe.fixed(config.max_batch_size)
    batcher.max_batch_size = batcher.decision["max_batch_size"]
    log.info("%s", batch_probe.summary(name, batcher.decision))
    return batcher.decision


async def decide_batching(entry: ModelEntry, config: ServerConfig) -> dict:
    """``settle`` off the event loop (the measurement takes up to a few seconds)."""
    return await asyncio.get_running_loop().run_in_executor(None, settle, entry, config)


def _measure(entry: ModelEntry, config: ServerConfig) -> dict:
    """Time a throw-away instance, so the probe's batch buffers leave no memory behind."""
    probe = load_instance(entry.classifier, entry.batcher.plan, config.device, config.spin_wait)
    height, width = probe.input_size
    pixels = np.random.default_rng(0).integers(0, 256, (1, height, width, 3), dtype=np.uint8)
    shape = probe.engine.input_shape
    fixed_batch = shape[0] if shape and isinstance(shape[0], int) else None
    limit = config.batch_limit
    return batch_probe.decide(lambda p: probe.predict_pixels(p, limit), pixels, limit, fixed_batch)
