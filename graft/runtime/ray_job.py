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
from graft.runtime.results import Result


class RayError(GraftError):
    """Ray is missing, or the cluster cannot be reached."""


class BatchPredictor:
    """The stateful ``map_batches`` callable: one Classifier and decode pool per actor."""

    def __init__(self, model: str, top_k: int, device: str, threads: int | None,
                 model_threads: int | None, artifact: str | None = None):
        from graft.runtime.batch import decode_pool, load_classifier

        self.clf = load_classifier(model, device, model_threads, artifact)
        self.top_k = top_k
        self.pool = decode_pool(threads)

    def __call__(self, batch):
        import pyarrow as pa

        from graft.runtime.batch import predict_batch

        results = predict_batch(self.clf, list(batch["file"].to_pylist()), self.top_k, self.pool)
        return pa.table({
            "path": batch["path"],
            "labels": pa.array([list(r.labels) for r in results], pa.list_(pa.string())),
            "scores": pa.array([list(r.scores) for r in results], pa.list_(pa.float64())),
            "error": pa.array([_own_path(r.error, f, p) for r, f, p in
                               zip(results, batch["file"].to_pylist(), batch["path"].to_pylist())],
                              pa.string()),
        })


def _own_path(error: str, file: str, path: str) -> str:
    """Errors name the path as the user gave it, not the absolute one the worker read."""
    return error.replace(file, path, 1) if error else ""


def iter_ray_predictions(model: str | os.PathLike, paths: Sequence[str], *, top_k: int = 3,
                         batch_size: int = 32, threads: int | None = None, device: str = "auto",
                         model_threads: int | None = None, artifact: str | None = None,
                         address: str | None = None,
                         num_cpus: int | None = None, actors: int | None = None) -> Iterator[Result]:
    """Yield one Result per path, in order, computed on Ray Data."""
    if not paths:
        return
    with ray_session(address, num_cpus) as ray:
        import ray.data

        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        context.execution_options.preserve_order = True
        items = [{"path": p, "file": os.path.abspath(p)} for p in paths]
        dataset = ray.data.from_items(items, override_num_blocks=_blocks(len(items), batch_size))
        predicted = dataset.map_batches(
            BatchPredictor, batch_size=batch_size, batch_format="pyarrow",
            concurrency=actors or _default_actors(ray), num_cpus=1,
            fn_constructor_kwargs={"model": os.path.abspath(model), "top_k": top_k, "device": device,
                                   "threads": threads, "model_threads": model_threads,
                                   "artifact": artifact})
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


def _default_actors(ray) -> int:
    """One model replica per two CPUs of the cluster (each decodes in its own threads)."""
    cpus = int(ray.cluster_resources().get("CPU", 1))
    return max(1, cpus // 2)


def _blocks(count: int, batch_size: int) -> int:
    return max(1, min(200, -(-count // (batch_size * 4))))
