"""Parity: run an exported file next to the Keras model on the bundle's held-out images.

The held-out split is read through the runtime's own preprocessing and
streamed in batches: pixels are kept in memory only while they fit in
``IN_MEMORY_BYTES``, so checking 100k images needs no more memory than 1k
(only the (N, classes) probabilities are kept). Every check runs the exported
file through the runtime engines: what ships is what is verified. Budgets are
per precision family.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from graft import bundle
from graft.errors import ExportError

# Fractions (0.98 = 98%); max_accuracy_drop is in accuracy fraction (0.01 = 1 point).
BUDGETS = {
    "float32": {"min_agreement": 1.0, "max_abs_diff": 1e-4},
    "float16": {"min_agreement": 0.995},
    "int8": {"min_agreement": 0.98, "max_accuracy_drop": 0.01},
}
BATCH = 64
IN_MEMORY_BYTES = 512 * 1024 * 1024  # decoded held-out pixels kept between passes up to this size


class HeldOut:
    """The held-out images of a bundle, their labels and the Keras model's probabilities.

    Args:
        bundle_dir: the bundle.
        data_root: the dataset's new root if it moved since the build.
        split: the split to use ('test'; falls back to val, then train, when empty).
        limit: use at most this many images.
    """

    def __init__(self, bundle_dir: str | Path, data_root: str | Path | None = None,
                 split: str = "test", limit: int | None = None):
        self.bundle_dir = Path(bundle_dir)
        self.manifest = bundle.read_manifest(bundle_dir)
        rows, self.split = bundle.held_out_rows(bundle_dir, split)
        self.rows = rows[:limit] if limit else rows
        self.data_root = data_root
        labels = self.manifest["labels"]
        unknown = sorted({row["label"] for row in self.rows} - set(labels))
        if unknown:
            raise ExportError(f"{bundle_dir}: splits.json names label {unknown[0]!r}, which graft.json "
                              "does not have; the two files are from different builds, rebuild the bundle")
        self.y = np.array([labels.index(row["label"]) for row in self.rows], dtype=np.int64)
        height, width = self.manifest["preprocessing"]["size"]
        self._fits = len(self.rows) * height * width * 3 <= IN_MEMORY_BYTES
        self._cached: list[np.ndarray] | None = None  # set once one pass has decoded every image
        self._reference: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def batches(self, size: int = BATCH) -> Iterator[np.ndarray]:
        """uint8 pixel batches (n, H, W, 3), in row order; decoded once when they fit in memory."""
        if self._cached is not None:
            yield from self._cached
            return
        decoded = []
        for start in range(0, len(self.rows), size):
            pixels = load_rows(self.rows[start:start + size], self.manifest, self.data_root,
                               f"{self.split} image")
            if self._fits:
                decoded.append(pixels)
            yield pixels
        if self._fits:  # only a complete pass is kept
            self._cached = decoded

    def sample(self, count: int) -> np.ndarray:
        """The first ``count`` images (for speed measurements)."""
        return load_rows(self.rows[:count], self.manifest, self.data_root, f"{self.split} image")

    def reference(self, model=None) -> np.ndarray:
        """The Keras model's probabilities (N, C), computed once, batch by batch."""
        if self._reference is None:
            model = model or load_keras(self.bundle_dir)
            outputs = [np.asarray(model.predict_on_batch(pixels.astype(np.float32)), dtype=np.float32)
                       for pixels in self.batches()]
            classes = len(self.manifest["labels"])
            self._reference = np.concatenate(outputs) if outputs else np.zeros((0, classes), np.float32)
        return self._reference


def load_rows(rows: list[dict], manifest: dict, data_root: str | Path | None, what: str) -> np.ndarray:
    """uint8 pixels (N, H, W, 3) of splits.json rows, through the runtime's preprocessing."""
    from graft.runtime.preprocess import load_pixels

    pixels = []
    for row in rows:
        path = bundle.sample_file(row, data_root)
        if not path.is_file():
            raise ExportError(f"{path}: {what} of the bundle is missing; if the dataset moved, "
                              "pass --data DATA (its new root)")
        pixels.append(load_pixels(path, manifest["preprocessing"]))
    if not pixels:
        height, width = manifest["preprocessing"]["size"]
        return np.zeros((0, height, width, 3), np.uint8)
    return np.stack(pixels)


def load_keras(bundle_dir: str | Path):
    """The bundle's model.keras (safe_mode, not compiled)."""
    import keras

    path = Path(bundle_dir, bundle.KERAS_NAME)
    if not path.is_file():
        raise ExportError(f"{bundle_dir}: no {bundle.KERAS_NAME}; build the bundle first")
    return keras.saving.load_model(path, safe_mode=True, compile=False)


def compare(reference: np.ndarray, candidate: np.ndarray) -> dict:
    """Top-1 agreement and max |difference| between two probability arrays."""
    if reference.shape != candidate.shape:
        raise ExportError(f"output shapes differ: reference {reference.shape}, export {candidate.shape}")
    agreement = float((reference.argmax(1) == candidate.argmax(1)).mean()) if len(reference) else 1.0
    max_diff = float(np.abs(reference - candidate).max()) if len(reference) else 0.0
    return {"images": int(len(reference)), "top1_agreement": agreement, "max_abs_diff": max_diff}


def budget_for(family: str, overrides: dict | None = None) -> dict:
    """The budget of a precision family ('float32', 'float16', 'int8') with overrides applied."""
    budget = dict(BUDGETS[family])
    budget.update((overrides or {}).get(family, {}))
    return budget


def is_default_budget(family: str, budget: dict) -> bool:
    """Whether ``budget`` is the default one of its family (a looser one must be reported)."""
    return budget == BUDGETS[family]


def breaches(result: dict, budget: dict) -> list[str]:
    """What a result breaks in a budget, as short phrases (empty: within budget)."""
    found = []
    if result["top1_agreement"] < budget.get("min_agreement", 0.0):
        found.append(f"agreement {result['top1_agreement']:.2%} < {budget['min_agreement']:.2%}")
    if not result["max_abs_diff"] <= budget.get("max_abs_diff", float("inf")):  # NaN breaks it too
        found.append(f"max |dprob| {result['max_abs_diff']:.2e} > {budget['max_abs_diff']:.0e}")
    drop = result.get("accuracy_drop")
    if drop is not None and not drop <= budget.get("max_accuracy_drop", float("inf")):
        found.append(f"accuracy drop {drop * 100:.2f} pt > {budget['max_accuracy_drop'] * 100:.2f} pt")
    return found


def judge(result: dict, family: str, budgets: dict | None) -> dict:
    """Judge a parity result: ``passed`` under the budget given, ``status`` under it and the default.

    Returns the fields a graft.json row keeps: status ('ok' or 'flagged'), flagged
    (why), budget (the one given), budget_default (whether it is the default) and
    default_breaches (what the default budget finds).
    """
    budget = budget_for(family, budgets)
    given = breaches(result, budget)
    default = breaches(result, budget_for(family))
    verdict = {"budget": budget, "budget_default": is_default_budget(family, budget),
               "passed": not given, "breaches": given, "default_breaches": default}
    found = list(dict.fromkeys(given + default))
    verdict["status"] = "flagged" if found else "ok"
    if found:
        verdict["flagged"] = "breaks its budget: " + ", ".join(found)
        if not given:
            verdict["flagged"] = "breaks the default budget (" + ", ".join(default) + \
                                 "); passes only the looser budget it was verified with"
    return verdict


def accuracy(probs: np.ndarray, y: np.ndarray) -> float:
    return float((probs.argmax(1) == y).mean()) if len(y) else 0.0


def run_file(path: Path, held_out: HeldOut, threads: int | None = None, batch: int = 32) -> np.ndarray:
    """The exported file's probabilities (N, C) on the held-out images, through the runtime."""
    from graft.runtime.engines import open_engine, run_batched

    engine = open_engine(path, device="cpu", threads=threads)
    outputs = [out for pixels in held_out.batches() for out in run_batched(engine, pixels, batch)]
    classes = len(held_out.manifest["labels"])
    return np.concatenate(outputs) if outputs else np.zeros((0, classes), np.float32)


def check_file(path: Path, held_out: HeldOut, threads: int | None = None, batch: int = 32) -> dict:
    """Run an exported file on the held-out images and measure it against Keras (``judge``
    then applies a budget)."""
    reference = held_out.reference()
    candidate = run_file(path, held_out, threads, batch)
    result = compare(reference, candidate)
    keras_accuracy = accuracy(reference, held_out.y)
    result.update(accuracy=accuracy(candidate, held_out.y), keras_accuracy=keras_accuracy,
                  accuracy_drop=keras_accuracy - accuracy(candidate, held_out.y))
    return {"reference": "keras", "split": held_out.split, **result}
