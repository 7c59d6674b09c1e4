"""The batch job on Ray Data: same inputs, same rows, same output as the local engine.

The driver expands the inputs and skips what a resumed output already holds
(``batch.run_job``); Ray Data spreads the remaining paths over a pool of actors
(``map_batches`` with a stateful class that opens the runtime's ``Classifier``
once per actor and decodes each batch in a thread pool), and the driver writes
the rows it streams back in the usual durable chunks, so a job cut short by a
lost node is finished by ``--resume``.

The model travels with the job: the driver puts its bytes and manifest in Ray's
object store once, and every actor opens the model from there. Only the images
must be readable on every node (shared storage); an image a node cannot read
becomes a row error naming that node. Actors are sized to the nodes and results
are streamed with a limit (``ray_cluster``).

Ray is an optional extra (``graft[ray]``); nothing here is imported unless
``--engine ray`` is asked for.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator, Sequence

from graft.runtime.classifier import Classifier
from graft.runtime.engines import open_engine
from graft.runtime.pipeline import (NO_SPINNING, Result, arrow_table, decode_pool, load_classifier,
                                    predict_batch, row_text)
from graft.runtime.ray_cluster import (SCHEDULE_TIMEOUT, Heartbeat, RayError, cluster_nodes,  # noqa: F401
                                       dataset_blocks, offers, plan_actors, ray_session, stream)


RESUME_HINT = "the rows written so far are kept: run the same command with --resume to finish"


@dataclass(frozen=True)
class ModelBlob:
    """A model as it travels through the object store: its file's name and bytes, its manifest."""

    name: str
    data: bytes
    manifest: dict
    sha256: str

    @classmethod
    def of(cls, clf: Classifier) -> "ModelBlob":
        with open(clf.source, "rb") as fh:
            return cls(os.path.basename(clf.source), fh.read(), clf.manifest, clf.sha256)

    def open(self, device: str, threads: int | None) -> Classifier:
        options = {"session_config": NO_SPINNING} if self.name.lower().endswith(".onnx") else {}
        engine = open_engine(self.name, device=device, threads=threads, model_bytes=self.data, **options)
        return Classifier(engine, self.manifest, self.name, sha256=self.sha256)


class BatchPredictor:
    """The stateful ``map_batches`` callable: one Classifier and decode pool per actor."""

    def __init__(self, model, top_k: int, device: str, decode_threads: int | None,
                 model_threads: int | None):
        import ray

        blob = ray.get(model) if isinstance(model, ray.ObjectRef) else model
        self.clf = blob.open(device, model_threads)
        self.top_k = top_k
        self.pool = decode_pool(decode_threads)
        self.node = node_name(ray)

    def __call__(self, batch):
        files = [os.fsdecode(f) for f in batch["file"].to_pylist()]  # bytes: any file name travels
        paths = batch["path"].to_pylist()
        results = predict_batch(self.clf, files, self.top_k, self.pool)
        return arrow_table([Result(path, r.labels, r.scores, self._error(r.error, file, path))
                            for r, file, path in zip(results, files, paths)])

    def _error(self, error: str, file: str, path: str) -> str:
        """Errors name the path as the user gave it, and the node when it cannot read the file."""
        if not error:
            return ""
        error = error.replace(row_text(file), path, 1)
        if not os.access(file, os.R_OK):
            error += f" (on {self.node}, which cannot read it: inputs must be on storage every node sees)"
        return error


def node_name(ray) -> str:
    """'Ray node 127.0.0.1 (id 1a2b3c4d)': the node this process runs on."""
    node_id = ray.get_runtime_context().get_node_id()
    ip = ray.util.get_node_ip_address()
    return f"Ray node {ip} (id {node_id[:8]})"


def iter_ray_predictions(model: str | os.PathLike | Classifier, paths: Sequence[str], *, top_k: int = 3,
                         batch_size: int = 32, decode_threads: int | None = None, device: str = "auto",
                         model_threads: int | None = None, artifact: str | None = None,
                         address: str | None = None, num_cpus: int | None = None,
                         actors: int | None = None, cpus_per_actor: int | None = None,
                         schedule_timeout: float = SCHEDULE_TIMEOUT,
                         heartbeat: bool = False) -> Iterator[Result]:
    """Yield one Result per path, in order, computed on Ray Data.

    Actors are sized to the cluster's nodes (``plan_actors``); each reserves its CPUs,
    and its model and decode threads default to them. When no result arrives for
    ``schedule_timeout`` seconds, RayError says what is pending and what the nodes offer.
    """
    if not paths:
        return
    clf = model if isinstance(model, Classifier) else load_classifier(model, device, model_threads, artifact)
    with ray_session(address, num_cpus) as ray:
        plan = plan_actors(cluster_nodes(ray), actors, cpus_per_actor)
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        context.execution_options.preserve_order = True
        items = [{"path": row_text(p), "file": os.fsencode(os.path.abspath(p))} for p in paths]
        blocks = dataset_blocks(len(items), batch_size, plan.actors)
        predicted = ray.data.from_items(items, override_num_blocks=blocks).map_batches(
            BatchPredictor, batch_size=batch_size, batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=plan.actors), num_cpus=plan.cpus,
            fn_constructor_kwargs={"model": ray.put(ModelBlob.of(clf)), "top_k": top_k, "device": device,
                                   "decode_threads": decode_threads or plan.cpus,
                                   "model_threads": model_threads or plan.cpus})
        beat = Heartbeat("predict", len(items), heartbeat)
        batches = predicted.iter_batches(batch_size=batch_size, batch_format="pyarrow")
        for table in stream(batches, schedule_timeout, lambda: f"{plan.describe()}; the nodes offer "
                            f"{offers(ray)}", then=RESUME_HINT):
            beat.add(table.num_rows)
            for row in table.to_pylist():
                yield Result(row["path"], tuple(row["labels"]), tuple(row["scores"]), row["error"])
