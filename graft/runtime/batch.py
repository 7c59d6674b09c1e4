"""Batch inference over large image collections: the pipelined local job and its API.

Decoding and resizing run in a pool of threads, a few batches ahead of the
model, so they overlap with inference (Pillow and onnxruntime both release the
GIL). A file that cannot be read or decoded becomes a row with its error; the
job goes on.

    for result in iter_predictions("bundle/", ["images/"]):
        print(result.path, result.labels, result.scores, result.error)

    summary = run_job("bundle/", ["images/"], "out.csv", resume=True)
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import warnings
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from graft.errors import GraftError
from graft.runtime.classifier import Classifier, FlaggedExportWarning, resolve_model_file
from graft.runtime.preprocess import load_pixels
from graft.runtime.results import Result, chunked, expand_inputs, open_output, output_format

ENGINES = ("local", "ray")
PREFETCH_BATCHES = 2  # batches decoded ahead of the one the model is running
# ONNX Runtime's pool threads spin while they wait for work; between batches that
# takes the cores the decoding threads need, so a batch job turns spinning off.
NO_SPINNING = {"session.intra_op.allow_spinning": "0", "session.inter_op.allow_spinning": "0"}
# Decoding threads run at a lower priority than the model's: a model thread kept
# off its core stalls the whole batch, a decoder kept waiting only delays work
# that is ahead of the model anyway.
DECODE_NICENESS = 10


def default_threads() -> int:
    return max(1, min(8, os.cpu_count() or 1))


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


def decode_pool(threads: int | None = None) -> ThreadPoolExecutor:
    """The thread pool that decodes and resizes images (lower priority where the OS allows)."""
    return ThreadPoolExecutor(threads or default_threads(), thread_name_prefix="graft-decode",
                              initializer=_lower_priority)


def _lower_priority() -> None:
    with contextlib.suppress(AttributeError, OSError):  # per-thread niceness is Linux-only
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), DECODE_NICENESS)


def load_classifier(model: str | os.PathLike, device: str = "auto",
                    model_threads: int | None = None, artifact: str | None = None) -> Classifier:
    """``Classifier.load`` tuned for a pipelined job (no spinning model threads)."""
    with warnings.catch_warnings():  # Classifier.load below warns about a flagged export once
        warnings.simplefilter("ignore", FlaggedExportWarning)
        model_file, _, _ = resolve_model_file(model, artifact)
    onnx = model_file.suffix.lower() == ".onnx"
    return Classifier.load(model, device=device, model_threads=model_threads, artifact=artifact,
                           engine_options={"session_config": NO_SPINNING} if onnx else None)


# ------------------------------------------------------------------- one batch
def decode(path: str, contract: dict, max_pixels: int | None) -> np.ndarray | str:
    """Pixels for one file, or the error message that makes its row."""
    try:
        return load_pixels(path, contract, max_pixels)
    except GraftError as exc:
        return str(exc)
    except Exception as exc:  # a bad file must never stop the job
        return f"{path}: {type(exc).__name__}: {exc}"


def finish_batch(clf: Classifier, paths: Sequence[str], decoded: Sequence[np.ndarray | str],
                 top_k: int) -> list[Result]:
    """Run the model on the decoded images of one batch; keep errors in place."""
    good = [i for i, item in enumerate(decoded) if not isinstance(item, str)]
    results = [Result(path, error=_one_line(item) if isinstance(item, str) else "")
               for path, item in zip(paths, decoded)]
    if good:
        probs = clf.predict_pixels(np.stack([decoded[i] for i in good]), batch_size=len(good))
        for i, preds in zip(good, clf.top_k(probs, top_k)):
            results[i] = Result(paths[i], tuple(p.label for p in preds),
                                tuple(p.score for p in preds))
    return results


def predict_batch(clf: Classifier, paths: Sequence[str], top_k: int,
                  pool: ThreadPoolExecutor) -> list[Result]:
    """Decode one batch in ``pool`` and classify it (used by the Ray engine's workers)."""
    decoded = list(pool.map(lambda p: decode(p, clf.contract, clf.max_pixels), paths))
    return finish_batch(clf, paths, decoded, top_k)


def _one_line(message: str) -> str:
    return " ".join(message.split())


# ------------------------------------------------------------------- pipeline
def iter_predictions(model: Classifier | str | os.PathLike, inputs: Iterable[str | os.PathLike], *,
                     top_k: int = 3, batch_size: int = 32, threads: int | None = None,
                     device: str = "auto", model_threads: int | None = None,
                     artifact: str | None = None, expand: bool = True) -> Iterator[Result]:
    """Yield one Result per input image, in input order, decoding ahead in threads.

    ``model`` is a Classifier or a path for ``Classifier.load``; ``inputs`` are
    files, directories, globs or list files (``expand=False``: plain paths).
    """
    _check_sizes(batch_size, threads)
    clf = model if isinstance(model, Classifier) else load_classifier(model, device, model_threads,
                                                                      artifact)
    paths = expand_inputs(inputs) if expand else [str(p) for p in inputs]
    pool = decode_pool(threads)
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


def _check_sizes(batch_size: int, threads: int | None) -> None:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise GraftError(f"batch_size must be a positive integer; received {batch_size!r}")
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise GraftError(f"threads must be a positive integer; received {threads!r}")


# ------------------------------------------------------------------------ job
def run_job(model: str | os.PathLike, inputs: Iterable[str | os.PathLike], output: str | os.PathLike, *,
            top_k: int = 3, batch_size: int = 32, threads: int | None = None,
            device: str = "auto", model_threads: int | None = None, artifact: str | None = None,
            resume: bool = False, overwrite: bool = False, chunk_rows: int | None = None,
            engine: str = "local", address: str | None = None, num_cpus: int | None = None,
            actors: int | None = None, progress: bool = False) -> JobSummary:
    """Classify every input once into ``output`` (.csv, .jsonl or .parquet).

    Rows are appended in complete, fsynced chunks of ``chunk_rows`` (default:
    one batch for CSV/JSONL, 16 batches for Parquet). With ``resume`` an
    existing output is repaired and its paths are skipped, so after a crash
    every input ends up in it exactly once.
    """
    if engine not in ENGINES:
        raise GraftError(f"unknown engine {engine!r}; allowed: {', '.join(ENGINES)}")
    _check_sizes(batch_size, threads)
    fmt = output_format(output)
    chunk_rows = chunk_rows or (batch_size * 16 if fmt == "parquet" else batch_size)
    clf = load_classifier(model, device, model_threads, artifact)  # fail before any output
    paths = expand_inputs(inputs)
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if engine == "ray":  # join or start Ray before any output is touched
            from graft.runtime.ray_job import ray_session

            stack.enter_context(ray_session(address, num_cpus))
        writer, done = open_output(output, resume=resume, overwrite=overwrite)
        todo = [p for p in paths if p not in done]
        if engine == "ray":
            from graft.runtime.ray_job import iter_ray_predictions

            results = iter_ray_predictions(model, todo, top_k=top_k, batch_size=batch_size,
                                           threads=threads, device=device, artifact=artifact,
                                           model_threads=model_threads, actors=actors)
        else:
            results = iter_predictions(clf, todo, top_k=top_k, batch_size=batch_size,
                                       threads=threads, expand=False)
        ok, failed = _write_all(writer, results, len(todo), chunk_rows, progress)
    return JobSummary(str(output), len(paths), len(paths) - len(todo), ok, failed,
                      sum(done.rows[p] for p in paths if p in done),
                      time.perf_counter() - started)


def _write_all(writer, results: Iterable[Result], total: int, chunk_rows: int,
               progress: bool) -> tuple[int, int]:
    """Write ``results`` in durable chunks under a progress bar; return (ok, failed)."""
    ok = failed = 0
    with writer, _progress(total, progress) as advance:
        for chunk in chunked(_ticking(results, advance), chunk_rows):
            writer.write(chunk)
            bad = sum(1 for r in chunk if r.error)
            ok, failed = ok + len(chunk) - bad, failed + bad
    return ok, failed


def _ticking(results: Iterable[Result], advance: Callable[[int], None]) -> Iterator[Result]:
    for result in results:
        advance(1)
        yield result


class _progress:
    """A rich progress bar on stderr (images/s, time left), or nothing."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.enabled, self.bar = total, enabled, None

    def __enter__(self) -> Callable[[int], None]:
        if not self.enabled:
            return lambda n: None
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(TextColumn("predict"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
                            TextColumn("left {task.fields[left]}"),
                            console=Console(stderr=True), transient=False)
        self.bar.start()
        task = self.bar.add_task("predict", total=self.total, rate="- img/s", left="-:--:--")

        def advance(n: int) -> None:
            self.bar.advance(task, n)
            done, elapsed = self.bar.tasks[0].completed, self.bar.tasks[0].elapsed or 0.0
            if done and elapsed > 0:  # the average since the start: steady, unlike a burst
                rate = done / elapsed
                left = int((self.total - done) / rate)
                self.bar.update(task, rate=f"{rate:,.1f} img/s",
                                left=f"{left // 3600}:{left // 60 % 60:02d}:{left % 60:02d}")
        return advance

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()
