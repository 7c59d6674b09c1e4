"""Shared set-up for the benchmarks: one bundle made by graft's own build and export, generated
JPEGs, timing helpers, and the results file each benchmark writes for the docs to quote."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def bench_bundle(workdir: Path, targets: list[tuple[str, str]] = (("onnx", "float32"),),
                 backbone: str = "efficientnet_lite0") -> Path:
    """A real bundle, made as a user makes one: `graft build` on scikit-image's surface photographs
    (the demo's data; the default backbone with its ImageNet weights), then `graft export`
    for ``targets`` ((format, precision) pairs). Reused when it already has them."""
    from graft import bundle
    from graft.builder.build import BuildOptions, build_bundle
    from graft.demo import write_dataset
    from graft.errors import CheckFailed
    from graft.exporters import registry
    from graft.exporters.export import export_bundle

    out = workdir / f"{backbone}_bundle"
    if not bundle.is_bundle(out):
        data = workdir / "surfaces"
        write_dataset(data)
        build_bundle(data, out, BuildOptions(backbone=backbone, progress=False,
                                             cache_dir=str(workdir / "cache"), overwrite=True))
    manifest = bundle.read_manifest(out)
    missing = [registry.TARGETS[t] for t in targets if bundle.find_export(manifest, *t) is None]
    if missing:
        try:
            export_bundle(out, missing, echo=print)
        except CheckFailed as exc:  # flagged files are still measured; the tables show why
            print(f"note: {exc}")
    return out


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


def photo_jpegs(directory: Path, count: int, size: tuple[int, int] = (640, 480), seed: int = 0) -> list[str]:
    """``count`` 640x480 JPEGs cut from scikit-image's colour photographs (random crops, scaled)."""
    import skimage.data
    from PIL import Image

    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / f"img_{i:05d}.jpg" for i in range(count)]
    if all(p.exists() for p in paths):
        return [str(p) for p in paths]
    photos = [skimage.data.astronaut(), skimage.data.chelsea(), skimage.data.coffee(), skimage.data.rocket(),
              skimage.data.hubble_deep_field(), skimage.data.immunohistochemistry(), skimage.data.retina()]
    rng = np.random.default_rng(seed)
    for i, path in enumerate(paths):
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        ch, cw = int(h * rng.uniform(0.5, 1.0)), int(w * rng.uniform(0.5, 1.0))
        top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        crop = Image.fromarray(photo[top:top + ch, left:left + cw]).resize(size, Image.Resampling.BICUBIC)
        crop.save(path, quality=90)
    return [str(p) for p in paths]


def timed(fn, repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def median(values) -> float:
    return statistics.median(values)


def machine() -> dict:
    """What the numbers were measured on."""
    import onnxruntime

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpus": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
            "onnxruntime": onnxruntime.__version__, "load_average": round(os.getloadavg()[0], 2)}


def write_results(name: str, results: dict) -> Path:
    """benchmarks/results/NAME.json: the numbers the docs quote, with the machine and the date."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    document = {"benchmark": name, "measured": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "machine": machine(), **results}
    path.write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {path}")
    return path
