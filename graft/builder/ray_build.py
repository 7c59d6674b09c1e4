"""Feature extraction on Ray Data: TF-free workers run the backbone's ONNX file.

The driver (``graft build --engine ray``) hashes the images, converts the
backbone and checks its parity against Keras; Ray Data then spreads the images
to extract over a pool of actors. Each actor opens the runtime's ONNX engine on
the backbone bytes it was given, reads and decodes its images in a thread pool
(the same ``read_pixels`` as the local engine: same bytes check, same
preprocessing) and returns one vector per image, or the reason it failed. The
driver streams the results back and writes them as shards in its feature cache,
so the cache needs no shared storage; the images do (as for ``graft predict``).
The backbone travels through Ray's object store. Actors are sized to the nodes,
and results stream with a limit (``runtime.ray_cluster``). Shards are written
by the driver, each atomically, so a lost node never leaves a half-written one;
Ray retries a lost actor's batches, and a build that stops anyway keeps every
complete shard, so the next build extracts only what is missing.

This module imports neither TensorFlow nor Keras: the actors import it.
"""

from __future__ import annotations

import os
import sys

import numpy as np

from graft.builder.features import read_pixels, reason
from graft.builder.onnx_features import open_extractor
from graft.builder.shards import ShardWriter
from graft.progress import Task
from graft.runtime.pipeline import decode_pool


class FeatureWorker:
    """The stateful ``map_batches`` callable: one ONNX session and decode pool per actor."""

    def __init__(self, model, dim: int, contract: dict, decode_threads: int, model_threads: int):
        import ray

        self.engine = open_extractor(ray.get(model) if isinstance(model, ray.ObjectRef) else model,
                                     model_threads)
        self.node = ray.get_runtime_context().get_node_id()
        self.dim, self.contract = dim, contract
        self.pool = decode_pool(decode_threads)

    def _load(self, file_and_sha):
        try:
            return read_pixels(file_and_sha[0], file_and_sha[1], self.contract)
        except Exception as exc:  # a bad file becomes its row's reason
            return exc

    def __call__(self, batch: dict) -> dict:
        loaded = list(self.pool.map(self._load, zip(batch["file"], batch["sha"])))
        good = [i for i, item in enumerate(loaded) if not isinstance(item, Exception)]
        features = np.zeros((len(loaded), self.dim), np.float32)
        if good:
            features[good] = self.engine.run(np.stack([loaded[i] for i in good]).astype(np.float32))
        return {"key": np.asarray(batch["key"]), "features": features,
                "error": np.array([reason(x) if isinstance(x, Exception) else "" for x in loaded], object),
                "worker": np.full(len(loaded), f"{self.node}:{os.getpid()}", object),
                "tensorflow": np.full(len(loaded), "tensorflow" in sys.modules or "keras" in sys.modules)}


def extract_on_ray(rows: list[dict], model: bytes, dim: int, contract: dict, writer: ShardWriter,
                   options, task: Task | None = None, heartbeat: bool = False) -> tuple[dict[str, str], dict]:
    """Extract ``rows`` ({key, file, sha}) on Ray Data into ``writer``.

    Args:
        rows: one per image to extract: its cache key, absolute path and content sha256.
        model: the backbone's ONNX bytes (put in the object store once, opened by every actor).
        dim: the feature dimension.
        options: ``ExtractOptions`` (address, num_cpus, actors, cpus_per_actor, threads,
            batch_size, schedule_timeout).
        heartbeat: print a progress line now and then (when there is no progress bar).

    Returns:
        ``{key: reason}`` for the images that failed, and facts for graft.json (actors,
        CPUs per actor, whether any worker had TensorFlow loaded).

    The vectors that came back are written as complete shards even when the job stops
    (a lost node Ray could not recover from, a scheduling limit): a new build finds
    them in the cache and extracts only the rest.
    """
    from graft.runtime.ray_cluster import (Heartbeat, cluster_nodes, dataset_blocks, offers, plan_actors,
                                           ray_session, stream)

    task = task or Task()
    failed: dict[str, str] = {}
    workers, tensorflow = set(), False
    with ray_session(options.address, options.num_cpus) as ray:
        plan = plan_actors(cluster_nodes(ray), options.actors, options.cpus_per_actor)
        facts = {"actors": plan.actors, "cpus_per_actor": plan.cpus, "nodes": len(plan.nodes)}
        ray.data.DataContext.get_current().enable_progress_bars = False
        if not rows:
            writer.close()
            return failed, {**facts, "workers_seen": 0, "tensorflow_in_workers": False}
        blocks = dataset_blocks(len(rows), options.batch_size, plan.actors)
        extracted = ray.data.from_items(rows, override_num_blocks=blocks).map_batches(
            FeatureWorker, batch_size=options.batch_size, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=plan.actors), num_cpus=plan.cpus,
            fn_constructor_kwargs={"model": ray.put(model), "dim": dim, "contract": contract,
                                   "decode_threads": options.decode_threads or plan.cpus,
                                   "model_threads": options.model_threads or plan.cpus})
        beat = Heartbeat("features", len(rows), heartbeat)
        batches = extracted.iter_batches(batch_size=options.batch_size, batch_format="numpy")
        try:
            for batch in stream(batches, options.schedule_timeout,
                                lambda: f"{plan.describe()}; the nodes offer {offers(ray)}",
                                then="the features that came back are cached: run the build again"):
                errors = [str(e) for e in batch["error"]]
                ok = [i for i, e in enumerate(errors) if not e]
                writer.add([str(batch["key"][i]) for i in ok], batch["features"][ok])
                failed.update({str(batch["key"][i]): e for i, e in enumerate(errors) if e})
                workers.update(str(w) for w in batch["worker"])
                tensorflow = tensorflow or bool(np.any(batch["tensorflow"]))
                task.advance(len(errors))
                beat.add(len(errors))
        finally:
            writer.close()  # what came back is kept, in complete shards
    return failed, {**facts, "workers_seen": len(workers), "tensorflow_in_workers": tensorflow}
