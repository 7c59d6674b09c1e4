"""The batch job on Ray Data: same inputs, same rows, same output as the local engine.

The driver expands the inputs and skips what a resumed output already holds
(``batch.run_job``); Ray Data spreads the remaining paths over a pool of actors
(``map_batches`` with a stateful class that loads the runtime's ``Classifier``
once per actor and decodes each batch in a thread pool), and the driver writes
the rows it streams back in the usual durable chunks. Workers read the model
and the images themselves, so on a cluster both must be at the same path on
every node (shared storage).

Ray is an optional extra (``graft[ray]``); nothing here is imported unless
``--engine ray`` is asked for.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator, Sequence

from graft.errors import GraftError, first_line
from graft.runtime.pipeline import (Result, arrow_table, decode_pool, load_classifier, predict_batch,
                                    row_text)


class RayError(GraftError):
    """Ray is missing, or the cluster cannot be reached."""


class BatchPredictor:
    """The stateful ``map_batches`` callable: one Classifier and decode pool per actor."""

    def __init__(self, model: str, top_k: int, device: str, decode_threads: int | None,
                 model_threads: int | None, artifact: str | None = None):
        self.clf = load_classifier(model, device, model_threads, artifact)
        self.top_k = top_k
        self.pool = decode_pool(decode_threads)

    def __call__(self, batch):
        files = [os.fsdecode(f) for f in batch["file"].to_pylist()]  # bytes: any file name travels
        paths = batch["path"].to_pylist()
        results = predict_batch(self.clf, files, self.top_k, self.pool)
        return arrow_table([Result(path, r.labels, r.scores, _own_path(r.error, row_text(file), path))
                            for r, file, path in zip(results, files, paths)])


def _own_path(error: str, file: str, path: str) -> str:
    """Errors name the path as the user gave it, not the absolute one the worker read."""
    return error.replace(file, path, 1) if error else ""


def iter_ray_predictions(model: str | os.PathLike, paths: Sequence[str], *, top_k: int = 3,
                         batch_size: int = 32, decode_threads: int | None = None, device: str = "auto",
                         model_threads: int | None = None, artifact: str | None = None,
                         address: str | None = None,
                         num_cpus: int | None = None, actors: int | None = None) -> Iterator[Result]:
    """Yield one Result per path, in order, computed on Ray Data.

    Each actor reserves its share of the cluster's CPUs (``num_cpus``), and its
    model and decode threads default to that share, so actors never oversubscribe
    a node.
    """
    if not paths:
        return
    with ray_session(address, num_cpus) as ray:
        import ray.data

        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        context.execution_options.preserve_order = True
        items = [{"path": row_text(p), "file": os.fsencode(os.path.abspath(p))} for p in paths]
        dataset = ray.data.from_items(items, override_num_blocks=dataset_blocks(len(items), batch_size))
        replicas, share = actor_shares(cluster_cpus(ray), actors)
        predicted = dataset.map_batches(
            BatchPredictor, batch_size=batch_size, batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=replicas), num_cpus=share,
            fn_constructor_kwargs={"model": os.path.abspath(model), "top_k": top_k, "device": device,
                                   "decode_threads": decode_threads or share,
                                   "model_threads": model_threads or share, "artifact": artifact})
        for table in predicted.iter_batches(batch_size=batch_size, batch_format="pyarrow"):
            for row in table.to_pylist():
                yield Result(row["path"], tuple(row["labels"]), tuple(row["scores"]), row["error"])


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None):
    """Join ``address``, reuse a running Ray, or start a local one (stopped on exit)."""
    ray = _import_ray()
    started_here = _connect(ray, address, num_cpus)
    try:
        yield ray
    finally:
        if started_here:
            ray.shutdown()


def _import_ray():
    try:
        import ray
    except ImportError:
        raise RayError("--engine ray needs Ray Data; install graft[ray]") from None
    return ray


def _connect(ray, address: str | None, num_cpus: int | None) -> bool:
    """Join ``address``, reuse a running Ray, or start a local one; True if started here."""
    if ray.is_initialized():
        return False
    options = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    try:
        if address:
            _check_reachable(address)
            ray.init(address=address, **options)
        else:
            ray.init(num_cpus=num_cpus, **options)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = address or "a local Ray"
        raise RayError(f"cannot start or join {where} ({first_line(exc, 200)}); "
                       "check --address, or leave it out to start a local Ray") from None
    return True


def _check_reachable(address: str) -> None:
    """Fail in seconds, not after Ray's minutes of retries, when HOST:PORT does not answer."""
    import socket

    host, sep, port = address.split("://", 1)[-1].rpartition(":")
    if not sep or not port.isdigit():
        return  # "auto" and the like: Ray resolves them
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=10).close()
    except OSError as exc:
        raise RayError(f"cannot reach a Ray cluster at {address} ({exc.strerror or exc}); "
                       "check --address, or leave it out to start a local Ray") from None


def cluster_cpus(ray) -> int:
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def actor_shares(cpus: int, actors: int | None = None) -> tuple[int, int]:
    """(replicas, CPUs per replica): one replica per two CPUs by default; each reserves its
    share, and its model and decode threads use that many."""
    replicas = actors or max(1, cpus // 2)
    return replicas, max(1, cpus // replicas)


def dataset_blocks(count: int, batch_size: int) -> int:
    """Blocks for a dataset of ``count`` rows: about four batches each, 1 to 200."""
    return max(1, min(200, -(-count // (batch_size * 4))))
