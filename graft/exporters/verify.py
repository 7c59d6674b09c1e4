"""Parity and verification: run exports next to the Keras model on the bundle's held-out images.

Every check runs the exported file through the runtime engines (what ships is
what is verified). Budgets are per precision family; ``graft verify`` adds
latency and throughput and writes the table into the bundle.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from graft import bundle
from graft.errors import ExportError

# Fractions (0.98 = 98%); max_accuracy_drop is in accuracy fraction (0.01 = 1 point).
BUDGETS = {
    "float32": {"min_agreement": 1.0, "max_abs_diff": 1e-4},
    "float16": {"min_agreement": 0.995},
    "int8": {"min_agreement": 0.98, "max_accuracy_drop": 0.01},
}
FLOAT32_BUDGET = BUDGETS["float32"]


def load_split(bundle_dir: str | Path, split: str = "test", data_root: str | Path | None = None,
               limit: int | None = None) -> tuple[np.ndarray, np.ndarray, str]:
    """uint8 pixels (N, H, W, 3) and label indices for a split, through the runtime's preprocessing.

    Falls back to the validation split, then the training split, when a split is
    empty (tiny datasets). Returns the split actually used.
    """
    from graft.runtime.preprocess import load_pixels

    manifest = bundle.read_manifest(bundle_dir)
    rows = read_splits(bundle_dir)
    order = [split] + [s for s in ("test", "val", "train") if s != split]
    for name in order:
        chosen = [r for r in rows["samples"] if r["split"] == name]
        if chosen:
            break
    else:
        raise ExportError(f"{bundle_dir}: splits.json lists no images")
    if limit:
        chosen = chosen[:limit]
    labels = manifest["labels"]
    pixels, y = [], []
    for row in chosen:
        path = Path(data_root, row["path"]) if data_root else Path(row["file"])
        if not path.is_file():
            raise ExportError(f"{path}: {name} image of the bundle is missing; if the dataset moved, "
                              "pass --data DATA (its new root)")
        pixels.append(load_pixels(path, manifest["preprocessing"]))
        y.append(labels.index(row["label"]))
    return np.stack(pixels), np.array(y), name


def read_splits(bundle_dir) -> dict:
    path = Path(bundle_dir, "splits.json")
    if not path.is_file():
        raise ExportError(f"{bundle_dir}: no splits.json; rebuild the bundle with `graft build`")
    return json.loads(path.read_text())


def keras_probs(bundle_dir: str | Path, pixels: np.ndarray, batch_size: int = 64, model=None) -> np.ndarray:
    model = model or load_keras(bundle_dir)
    return np.asarray(model.predict(pixels.astype(np.float32), batch_size=batch_size, verbose=0),
                      dtype=np.float32)


def load_keras(bundle_dir: str | Path):
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


def within(result: dict, budget: dict) -> bool:
    return not breaches(result, budget)


def accuracy(probs: np.ndarray, y: np.ndarray) -> float:
    return float((probs.argmax(1) == y).mean()) if len(y) else 0.0


def check_file(path: Path, pixels: np.ndarray, y: np.ndarray, reference: np.ndarray, split: str,
               budget: dict, threads: int | None = None) -> dict:
    """Run an exported file through the runtime on held-out images and judge it against Keras."""
    from graft.runtime.engines import open_engine

    engine = open_engine(path, device="cpu", threads=threads)
    candidate = run_batched(engine, pixels)
    result = compare(reference, candidate)
    keras_accuracy = accuracy(reference, y)
    result.update(accuracy=accuracy(candidate, y), keras_accuracy=keras_accuracy,
                  accuracy_drop=keras_accuracy - accuracy(candidate, y))
    found = breaches(result, budget)
    return {"reference": "keras", "split": split, **result, "budget": dict(budget),
            "passed": not found, "breaches": found}


def run_batched(engine, pixels: np.ndarray, batch: int = 32) -> np.ndarray:
    fixed = engine.input_shape[0] if engine.input_shape else None
    step = fixed or batch
    return np.concatenate([engine.run(pixels[i:i + step]) for i in range(0, len(pixels), step)])
