"""Feature extraction on Ray Data: TF-free workers run the backbone's ONNX file.

The driver (``graft build --engine ray``) hashes the images, converts the
backbone and checks its parity against Keras; Ray Data then spreads the images
to extract over a pool of actors. Each actor opens the runtime's ONNX engine on
the backbone bytes it was given, reads and decodes its images in a thread pool
(the same ``read_pixels`` as the local engine: same bytes check, same
preprocessing) and returns one vector per image, or the reason it failed. The
driver streams the results back and writes them as shards in its feature cache,
so the cache needs no shared storage; the images do (as for ``graft predict``).

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

    def __init__(self, model: bytes, dim: int, contract: dict, decode_threads: int, model_threads: int):
        self.engine = open_extractor(model, model_threads)
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
                "worker": np.full(len(loaded), os.getpid(), np.int64),
                "tensorflow": np.full(len(loaded), "tensorflow" in sys.modules or "keras" in sys.modules)}


def extract_on_ray(rows: list[dict], model: bytes, dim: int, contract: dict, writer: ShardWriter,
                   options, task: Task | None = None) -> tuple[dict[str, str], dict]:
    """Extract ``rows`` ({key, file, sha}) on Ray Data into ``writer``.

    Args:
        rows: one per image to extract: its cache key, absolute path and content sha256.
        model: the backbone's ONNX bytes (sent to every actor).
        dim: the feature dimension.
        options: ``ExtractOptions`` (address, num_cpus, actors, threads, batch_size).

    Returns:
        ``{key: reason}`` for the images that failed, and facts for graft.json (actors,
        CPUs per actor, whether any worker had TensorFlow loaded).
    """
    from graft.runtime.ray_job import actor_shares, cluster_cpus, dataset_blocks, ray_session

    task = task or Task()
    failed: dict[str, str] = {}
    workers, tensorflow = set(), False
    with ray_session(options.address, options.num_cpus) as ray:
        import ray.data

        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        replicas, share = actor_shares(cluster_cpus(ray), options.actors)
        if not rows:
            writer.close()
            return failed, {"actors": replicas, "cpus_per_actor": share, "workers_seen": 0,
                            "tensorflow_in_workers": False}
        dataset = ray.data.from_items(rows, override_num_blocks=dataset_blocks(len(rows), options.batch_size))
        extracted = dataset.map_batches(
            FeatureWorker, batch_size=options.batch_size, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=replicas), num_cpus=share,
            fn_constructor_kwargs={"model": model, "dim": dim, "contract": contract,
                                   "decode_threads": options.decode_threads or share,
                                   "model_threads": options.model_threads or share})
        for batch in extracted.iter_batches(batch_size=options.batch_size, batch_format="numpy"):
            errors = [str(e) for e in batch["error"]]
            ok = [i for i, e in enumerate(errors) if not e]
            writer.add([str(batch["key"][i]) for i in ok], batch["features"][ok])
            failed.update({str(batch["key"][i]): e for i, e in enumerate(errors) if e})
            workers.update(int(w) for w in batch["worker"])
            tensorflow = tensorflow or bool(np.any(batch["tensorflow"]))
            task.advance(len(errors))
        writer.close()
    return failed, {"actors": replicas, "cpus_per_actor": share, "workers_seen": len(workers),
                    "tensorflow_in_workers": tensorflow}
