"""The per-batch core of batch inference, shared by the local job, Ray Data and the Spark UDF.

One batch of paths goes through the same steps wherever it runs: decode and
resize each file in a thread pool (a file that fails becomes its row's error),
run the model once on the good ones, and make one row per path. Rows have one
schema everywhere: path (string), labels (list of strings), scores (list of
float32), error (string, empty when ok).
"""

from __future__ import annotations

import contextlib
import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from graft.errors import GraftError
from graft.runtime.classifier import Classifier, FlaggedExportWarning, resolve_model_file
from graft.runtime.preprocess import load_pixels

COLUMNS = ["path", "labels", "scores", "error"]
# ONNX Runtime's pool threads spin while they wait for work; between batches that
# takes the cores the decoding threads need, so a batch job turns spinning off.
NO_SPINNING = {"session.intra_op.allow_spinning": "0", "session.inter_op.allow_spinning": "0"}
# Decoding threads run at a lower priority than the model's: a model thread kept
# off its core stalls the whole batch, a decoder kept waiting only delays work
# that is ahead of the model anyway.
DECODE_NICENESS = 10


@dataclass(frozen=True)
class Result:
    """One row of a batch job: top-k labels and scores (float32 values), or an error."""

    path: str
    labels: tuple[str, ...] = ()
    scores: tuple[float, ...] = ()
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error

    def as_dict(self) -> dict:
        return {"path": self.path, "labels": list(self.labels), "scores": list(self.scores),
                "error": self.error}


def row_text(text: str) -> str:
    """Text that every output format can hold: a file name that is not valid UTF-8 (Python keeps
    its bytes as surrogates) gets backslash escapes. Paths are rows' keys, so resume compares
    ``row_text(path)`` too."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def arrow_schema():
    """The rows' Arrow schema (Parquet parts, Ray Data batches)."""
    import pyarrow as pa

    return pa.schema([("path", pa.string()), ("labels", pa.list_(pa.string())),
                      ("scores", pa.list_(pa.float32())), ("error", pa.string())])


def arrow_table(results: Sequence[Result]):
    """Results as a pyarrow Table with ``arrow_schema()``."""
    import pyarrow as pa

    return pa.table({"path": [r.path for r in results], "labels": [list(r.labels) for r in results],
                     "scores": [list(r.scores) for r in results], "error": [r.error for r in results]},
                    schema=arrow_schema())


def default_threads() -> int:
    """Decode threads: the CPUs available (at most 8)."""
    return max(1, min(8, os.cpu_count() or 1))


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
        model_file = resolve_model_file(model, artifact).path
    onnx = model_file.suffix.lower() == ".onnx"
    return Classifier.load(model, device=device, model_threads=model_threads, artifact=artifact,
                           engine_options={"session_config": NO_SPINNING} if onnx else None)


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
    results = [Result(row_text(path), error=row_text(" ".join(item.split())) if isinstance(item, str) else "")
               for path, item in zip(paths, decoded)]
    if good:
        probs = clf.predict_pixels(np.stack([decoded[i] for i in good]), batch_size=len(good))
        for i, preds in zip(good, clf.top_k(probs, top_k)):
            results[i] = Result(row_text(paths[i]), tuple(p.label for p in preds),
                                tuple(float(np.float32(p.score)) for p in preds))
    return results


def predict_batch(clf: Classifier, paths: Sequence[str], top_k: int,
                  pool: ThreadPoolExecutor) -> list[Result]:
    """Decode one batch in ``pool`` and classify it (Ray workers, Spark tasks)."""
    decoded = list(pool.map(lambda p: decode(p, clf.contract, clf.max_pixels), paths))
    return finish_batch(clf, paths, decoded, top_k)
