"""Each model version's instances and batching, made from the server's settings.

``make_batcher`` loads the instances ``plan_instances`` asks for (every one its
own engine from the model file the repository loaded, checked against the same
sha256; in worker processes or in the server's threads, as the plan says) and
puts a batcher in front of them. ``decide_batching`` settles, at
start-up, whether that batcher combines requests (see ``batch_probe``).
"""

from __future__ import annotations

import asyncio
import copy
import logging
from pathlib import Path

from graft.runtime.classifier import Classifier
from graft.runtime.server import batch_probe, process_instance, worker
from graft.runtime.server.batcher import Batcher
from graft.runtime.server.config import ServerConfig
from graft.runtime.server.instances import CPU_SESSION_CONFIG, Instance, InstancePool
from graft.runtime.server.placement import GPU_DEVICES, InstancePlan, plan_instances, usable_cores
from graft.runtime.server.repository import ModelEntry

log = logging.getLogger("graft.serve")


def entry_plan(entry: ModelEntry, config: ServerConfig) -> InstancePlan:
    return plan_instances(config.instances, config.model_threads, entry.classifier.device,
                          kind=config.instance_kind, pin=config.pin_cores)


def engine_options(classifier: Classifier, spin: bool = False) -> dict:
    """An instance engine's options: on the CPU, onnxruntime's idle threads do not spin."""
    if Path(classifier.source).suffix.lower() == ".onnx" and classifier.device not in GPU_DEVICES and not spin:
        return {"session_config": CPU_SESSION_CONFIG}
    return {}


def load_instance(classifier: Classifier, plan: InstancePlan, device: str, spin: bool = False) -> Classifier:
    """A copy of ``classifier`` with an engine of its own (own session, own threads)."""
    return worker.open_model(copy.copy(classifier), device, plan.threads, engine_options(classifier, spin))


def _opening(entry: ModelEntry, plan: InstancePlan, config: ServerConfig) -> tuple:
    return process_instance.opening(entry.name, entry.classifier, config.device, plan.threads,
                                    engine_options(entry.classifier, config.spin_wait))


def load_instances(entry: ModelEntry, plan: InstancePlan, config: ServerConfig, indices: list[int]) -> list[Instance]:
    """Fresh instances ``indices`` of ``entry``: worker processes, or engines in this process."""
    name, limit = f"{entry.name}:{entry.version}", config.batch_limit
    if plan.kind == "process":
        workers = process_instance.start_workers(len(indices), name, _opening(entry, plan, config))
        return [process_instance.ProcessInstance(i, w, name, limit, cores_of(plan, i))
                for i, w in zip(indices, workers)]
    return [in_thread(load_instance(entry.classifier, plan, config.device, config.spin_wait), index, name,
                      limit, cores_of(plan, index)) for index in indices]


def in_thread(clone: Classifier, index: int, name: str, limit: int, cores: tuple[int, ...] | None = None,
              threads: int | None = None) -> Instance:
    """An instance in this process running ``clone``'s engine on batches of up to ``limit`` images."""
    instance = Instance(index, lambda pixels: clone.predict_pixels(pixels, limit), name, cores, threads)
    instance.engine = clone.engine
    return instance


def load_lone(entry: ModelEntry, plan: InstancePlan, config: ServerConfig) -> Instance | None:
    """The engine for requests alone (``--lone-request-threads``), for CPU instances in threads.

    Its threads may spin: it runs only while every instance idles, for the lowest latency.
    """
    threads = config.lone_request_threads
    if not threads or plan.kind != "thread":
        return None
    if entry.classifier.device in GPU_DEVICES:
        log.info("model %s:%s: --lone-request-threads applies to the CPU; not used on %s", entry.name,
                 entry.version, entry.classifier.device)
        return None
    if threads > usable_cores():
        log.warning("model %s:%s: --lone-request-threads %d is more than the %d core(s) this process may "
                    "use: the extra threads only take turns on them", entry.name, entry.version, threads,
                    usable_cores())
    clone = load_instance(entry.classifier, InstancePlan(1, threads, ""), config.device, spin=True)
    return in_thread(clone, plan.count, f"{entry.name}-alone", config.batch_limit, threads=threads)


def cores_of(plan: InstancePlan, index: int) -> tuple[int, ...] | None:
    return plan.cores[index] if plan.cores else None


def make_batcher(entry: ModelEntry, config: ServerConfig, on_batch=None) -> Batcher:
    """The batcher of one model version, with its instances loaded (batching off until decided)."""
    plan = entry_plan(entry, config)
    name = f"{entry.name}:{entry.version}"
    loaded = load_instances(entry, plan, config, list(range(plan.count)))
    if plan.kind == "thread":
        entry.classifier.engine = loaded[0].engine  # the repository's own engine is not kept
    pool = InstancePool(loaded, lambda index: load_instances(entry, plan, config, [index])[0], name=name,
                        lone=load_lone(entry, plan, config))
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
    log.info("model %s: %s", name, batcher.plan.reason + (
        f"; a request alone runs on an engine of {batcher.pool.lone.threads} thread(s)" if batcher.pool.lone else ""))
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
    plan = entry.batcher.plan
    if plan.kind == "process":
        (throwaway,) = process_instance.start_workers(1, f"{entry.name}:{entry.version}",
                                                      _opening(entry, plan, config))
        try:
            throwaway.send(("probe", config.batch_limit))
            return throwaway.receive(process_instance.START_TIMEOUT_S, "it measured batching")
        finally:
            throwaway.stop()
    probe = load_instance(entry.classifier, plan, config.device, config.spin_wait)
    return worker.probe(worker.Model(entry.name, probe), config.batch_limit)
