"""Quantization settings and the calibration set.

Calibration images are drawn class-balanced from the bundle's training split
and go through the runtime's own preprocessing (``load_pixels``), so the
calibrated ranges are those of the pixels the model will see in production.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from graft import bundle
from graft.errors import ExportError, GraftError

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
IO_DTYPES = ("float32", "int8", "uint8")


@dataclass
class ExportOptions:
    """Everything `graft export` can be told; the presets below fill in sensible values."""

    opset: int = 17
    calibration_size: int = 200
    calibration_method: str = "minmax"
    io_dtype: str = "float32"          # TFLite full-integer models: the dtype of input/output
    exclude_nodes: list[str] = field(default_factory=list)
    auto_exclude: bool = False
    seed: int = 0
    data_root: str | None = None

    def check(self) -> "ExportOptions":
        if self.calibration_method not in CALIBRATION_METHODS:
            raise GraftError(f"--calibration-method {self.calibration_method!r} is not known; "
                             f"allowed: {', '.join(CALIBRATION_METHODS)}")
        if self.io_dtype not in IO_DTYPES:
            raise GraftError(f"--io-dtype {self.io_dtype!r} is not known; allowed: {', '.join(IO_DTYPES)}")
        if not isinstance(self.calibration_size, int) or self.calibration_size < 1:
            raise GraftError(f"--calibration-size must be a positive integer; "
                             f"received {self.calibration_size!r}")
        return self


# Presets in the spirit of MediaPipe Model Maker's QuantizationConfig.
def for_float16(**overrides) -> ExportOptions:
    return ExportOptions(**overrides).check()


def for_dynamic(**overrides) -> ExportOptions:
    return ExportOptions(**overrides).check()


def for_int8(calibration_size: int = 200, calibration_method: str = "minmax",
             io_dtype: str = "float32", **overrides) -> ExportOptions:
    return ExportOptions(calibration_size=calibration_size, calibration_method=calibration_method,
                         io_dtype=io_dtype, **overrides).check()


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
    from graft.exporters.verify import load_rows, read_splits

    manifest = bundle.read_manifest(bundle_dir)
    rows = calibration_rows(read_splits(bundle_dir)["samples"], size, seed)
    if not rows:
        raise ExportError(f"{bundle_dir}: the training split lists no images to calibrate with; "
                          "rebuild the bundle with more data")
    pixels = load_rows(rows, manifest, data_root, "calibration image")
    per_class: dict[str, int] = {}
    for row in rows:
        per_class[row["label"]] = per_class.get(row["label"], 0) + 1
    facts = {"split": "train", "images": len(rows), "requested": size, "per_class": per_class,
             "seed": seed, "preprocessing": "graft.runtime.preprocess.load_pixels"}
    return pixels, facts
