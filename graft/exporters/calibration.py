"""The int8 calibration set: class-balanced training images through the runtime's preprocessing.

Calibrated ranges are those of the pixels the model will see in production,
because the same ``load_pixels`` decodes them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from graft import bundle
from graft.errors import ExportError
from graft.exporters.parity import load_rows


def calibration_rows(samples: list[dict], size: int, seed: int = 0) -> list[dict]:
    """Pick up to ``size`` training rows, taking classes in turn (balanced), reproducibly."""
    rng = np.random.default_rng(seed)
    by_label: dict[str, list[dict]] = {}
    for row in samples:
        if row["split"] == "train":
            by_label.setdefault(row["label"], []).append(row)
    queues = {}
    for label in sorted(by_label):
        rows = by_label[label]
        queues[label] = [rows[i] for i in rng.permutation(len(rows))]
    chosen: list[dict] = []
    while len(chosen) < size and any(queues.values()):
        for label in sorted(queues):
            if queues[label] and len(chosen) < size:
                chosen.append(queues[label].pop())
    return chosen


def calibration_set(bundle_dir: str | Path, size: int = 200, seed: int = 0,
                    data_root: str | None = None) -> tuple[np.ndarray, dict]:
    """uint8 calibration pixels (N, H, W, 3) and the facts recorded about them."""
    manifest = bundle.read_manifest(bundle_dir)
    rows = calibration_rows(bundle.read_splits(bundle_dir)["samples"], size, seed)
    if not rows:
        raise ExportError(f"{bundle_dir}: the training split lists no images to calibrate with; "
                          "rebuild the bundle with more data")
    pixels = load_rows(rows, manifest, data_root)
    per_class: dict[str, int] = {}
    for row in rows:
        per_class[row["label"]] = per_class.get(row["label"], 0) + 1
    facts = {"split": "train", "images": len(rows), "requested": size, "per_class": per_class,
             "seed": seed, "preprocessing": "graft.runtime.preprocess.load_pixels"}
    return pixels, facts
