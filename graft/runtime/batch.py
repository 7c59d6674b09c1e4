"""Batch inference over large image collections: the pipelined local job and its API.

Decoding and resizing run in a pool of threads, a few batches ahead of the
model, so they overlap with inference (Pillow and onnxruntime both release the
GIL). A file that cannot be read or decoded becomes a row with its error; the
job goes on. The same per-batch core (``pipeline``) runs on Ray Data and in the
Spark UDF.

    for result in iter_predictions("bundle/", ["images/"]):
        print(result.path, result.labels, result.scores, result.error)

    summary = run_job("bundle/", ["images/"], "out.csv", resume=True)
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Iterable, Iterator

from graft.errors import GraftError
from graft.progress import Progress
from graft.runtime.classifier import Classifier
from graft.runtime.inputs import chunked, expand_inputs
from graft.runtime.outputs import job_record, open_output, output_format
from graft.runtime.pipeline import Result, decode, decode_pool, finish_batch, load_classifier, row_text

ENGINES = ("local", "ray")
PREFETCH_BATCHES = 2  # batches decoded ahead of the one the model is running


@dataclass(frozen=True)
class JobSummary:
    output: str
    total: int          # unique inputs
    resumed: int        # rows an earlier run had written (skipped this time)
    ok: int             # rows written by this run without error
    failed: int         # rows written by this run with an error
    failed_before: int  # error rows among the resumed ones
    seconds: float

    @property
    def written(self) -> int:
        return self.ok + self.failed

    @property
    def rate(self) -> float:
        return self.written / self.seconds if self.seconds > 0 else 0.0


def iter_predictions(model: Classifier | str | os.PathLike, inputs: Iterable[str | os.PathLike], *,
                     top_k: int = 3, batch_size: int = 32, decode_threads: int | None = None,
                     device: str = "auto", model_threads: int | None = None,
                     artifact: str | None = None, expand: bool = True) -> Iterator[Result]:
    """Yield one Result per input image, in input order, decoding ahead in threads.

    Args:
        model: a Classifier, or a bundle / model file for ``Classifier.load``.
        inputs: files, directories, globs or list files (``expand=False``: plain paths).
        top_k: labels per row.
        batch_size: images per model call.
        decode_threads: threads decoding and resizing images (default: CPUs, at most 8).
        device, model_threads, artifact: as for ``Classifier.load``.

    Yields:
        ``Result(path, labels, scores, error)``, one per input.
    """
    _check_sizes(batch_size, decode_threads)
    clf = model if isinstance(model, Classifier) else load_classifier(model, device, model_threads,
                                                                      artifact)
    paths = expand_inputs(inputs) if expand else [str(p) for p in inputs]
    pool = decode_pool(decode_threads)
    pending: deque[tuple[list[str], list[Future]]] = deque()
    try:
        for batch in chunked(paths, batch_size):
            pending.append((batch, [pool.submit(decode, p, clf.contract, clf.max_pixels) for p in batch]))
            if len(pending) > PREFETCH_BATCHES:
                yield from _finish(clf, pending.popleft(), top_k)
        while pending:
            yield from _finish(clf, pending.popleft(), top_k)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _finish(clf: Classifier, item: tuple[list[str], list[Future]], top_k: int) -> list[Result]:
    paths, futures = item
    return finish_batch(clf, paths, [f.result() for f in futures], top_k)


def _check_sizes(batch_size: int, decode_threads: int | None) -> None:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise GraftError(f"batch_size must be a positive integer; received {batch_size!r}")
    if decode_threads is not None and (not isinstance(decode_threads, int) or decode_threads < 1):
        raise GraftError(f"decode_threads must be a positive integer; received {decode_threads!r}")


def run_job(model: str | os.PathLike, inputs: Iterable[str | os.PathLike], output: str | os.PathLike, *,
            top_k: int = 3, batch_size: int = 32, decode_threads: int | None = None,
            device: str = "auto", model_threads: int | None = None, artifact: str | None = None,
            resume: bool = False, overwrite: bool = False, chunk_rows: int | None = None,
            engine: str = "local", address: str | None = None, num_cpus: int | None = None,
            actors: int | None = None, cpus_per_actor: int | None = None,
            schedule_timeout: float | None = None, progress: bool = False, on_start=None) -> JobSummary:
    """Classify every input once into ``output`` (.csv, .jsonl or .parquet).

    Rows are appended in complete, fsynced chunks of ``chunk_rows`` (default:
    one batch for CSV/JSONL, 16 batches for Parquet). With ``resume`` an
    existing output of the same job (model, top-k, columns) is repaired and its
    paths are skipped, so after a crash every input ends up in it exactly once.

    Args:
        model: a bundle or an exported model file.
        inputs: files, directories, globs or list files.
        output: the result file.
        engine: 'local' (threads here) or 'ray' (Ray Data; ``address`` of a cluster,
            or a local Ray with ``num_cpus``; ``actors`` model replicas of ``cpus_per_actor``
            CPUs, sized to the nodes by default; ``schedule_timeout`` seconds without a
            result before it stops and says why).
        on_start: called with the loaded Classifier once the output is open (e.g. to say
            which export runs).
        Others: as for ``iter_predictions``.

    Returns:
        A JobSummary of what this run wrote and what was there before.
    """
    if engine not in ENGINES:
        raise GraftError(f"unknown engine {engine!r}; allowed: {', '.join(ENGINES)}")
    _check_sizes(batch_size, decode_threads)
    fmt = output_format(output)
    chunk_rows = chunk_rows or (batch_size * 16 if fmt == "parquet" else batch_size)
    clf = load_classifier(model, device, model_threads, artifact)  # fail before any output
    job = job_record(clf.sha256, os.path.basename(clf.source), top_k, artifact)
    paths = expand_inputs(inputs)
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if engine == "ray":  # join or start Ray before any output is touched
            from graft.runtime import ray_job

            ray = stack.enter_context(ray_job.ray_session(address, num_cpus))
            plan = ray_job.plan_actors(ray_job.cluster_nodes(ray), actors, cpus_per_actor)  # or refuse
            actors, cpus_per_actor = plan.actors, plan.cpus
        writer, done = open_output(output, job, resume=resume, overwrite=overwrite)
        if on_start is not None:
            on_start(clf)
        todo = [p for p in paths if row_text(p) not in done]
        if engine == "ray":
            results = ray_job.iter_ray_predictions(
                clf, todo, top_k=top_k, batch_size=batch_size, decode_threads=decode_threads,
                device=device, model_threads=model_threads, actors=actors, cpus_per_actor=cpus_per_actor,
                schedule_timeout=schedule_timeout or ray_job.SCHEDULE_TIMEOUT, heartbeat=not progress)
        else:
            results = iter_predictions(clf, todo, top_k=top_k, batch_size=batch_size,
                                       decode_threads=decode_threads, expand=False)
        ok, failed = _write_all(writer, results, len(todo), chunk_rows, progress)
    return JobSummary(str(output), len(paths), len(paths) - len(todo), ok, failed,
                      sum(done.rows[row_text(p)] for p in paths if row_text(p) in done),
                      time.perf_counter() - started)


def _write_all(writer, results: Iterable[Result], total: int, chunk_rows: int,
               progress: bool) -> tuple[int, int]:
    """Write ``results`` in durable chunks under a progress bar; return (ok, failed)."""
    ok = failed = 0
    with writer, Progress(progress) as bar:
        task = bar.task("predict", total=total, unit="img")
        for chunk in chunked(_ticking(results, task), chunk_rows):
            writer.write(chunk)
            bad = sum(1 for r in chunk if r.error)
            ok, failed = ok + len(chunk) - bad, failed + bad
    return ok, failed


def _ticking(results: Iterable[Result], task) -> Iterator[Result]:
    for result in results:
        task.advance(1)
        yield result
