"""Parity: run an export next to the Keras model on the bundle's own held-out images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from graft import bundle
from graft.errors import ExportError
from graft.runtime.preprocess import load_pixels

FLOAT32_BUDGET = {"min_agreement": 1.0, "max_abs_diff": 1e-4}


def load_split(bundle_dir: str | Path, split: str = "test", data_root: str | Path | None = None,
               limit: int | None = None) -> tuple[np.ndarray, np.ndarray, str]:
    """uint8 pixels (N, H, W, 3) and label indices for a split, through the runtime's preprocessing.

    Falls back to the validation split, then the training split, when a split is
    empty (tiny datasets). Returns the split actually used.
    """
    manifest = bundle.read_manifest(bundle_dir)
    rows = _split_rows(bundle_dir)
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


def _split_rows(bundle_dir) -> dict:
    path = Path(bundle_dir, "splits.json")
    if not path.is_file():
        raise ExportError(f"{bundle_dir}: no splits.json; rebuild the bundle with `graft build`")
    return json.loads(path.read_text())


def keras_probs(bundle_dir: str | Path, pixels: np.ndarray, batch_size: int = 64) -> np.ndarray:
    model = load_keras(bundle_dir)
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


def within(result: dict, budget: dict) -> bool:
    return (result["top1_agreement"] >= budget["min_agreement"]
            and result["max_abs_diff"] <= budget.get("max_abs_diff", float("inf")))
