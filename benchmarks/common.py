"""Shared set-up for the benchmarks: generated images and a MobileNetV2-size bundle."""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402


def make_images(root: Path, classes: int = 4, per_class: int = 100, size: tuple[int, int] = (256, 256),
                seed: int = 0) -> Path:
    """Class folders of JPEGs with a class-dependent colour and stripe pattern."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in range(classes):
        folder = root / f"class_{c}"
        folder.mkdir(parents=True, exist_ok=True)
        base = rng.integers(40, 215, 3)
        for i in range(per_class):
            pixels = base + rng.normal(0, 35, (size[1], size[0], 3))
            pixels[:, :: c + 2] += 40
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"{i:04d}.jpg", quality=90)
    return root


def mobilenet_bundle(workdir: Path, per_class: int = 20, epochs: int = 3) -> Path:
    """A MobileNetV2 (224 px, random weights: speed does not depend on them) bundle with an ONNX export."""
    from graft.builder.build import BuildOptions, build_bundle
    from graft.exporters.export import export_onnx

    out = workdir / "mobilenet_v2_bundle"
    if (out / "exports" / "model.float32.onnx").is_file():
        return out
    data = make_images(workdir / "mobilenet_data", per_class=per_class)
    build_bundle(data, out, BuildOptions(backbone="mobilenet_v2", weights="none", epochs=epochs,
                                         progress=False, cache_dir=str(workdir / "cache"), overwrite=True))
    export_onnx(out)
    return out


def timed(fn, repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def median(values) -> float:
    return statistics.median(values)
