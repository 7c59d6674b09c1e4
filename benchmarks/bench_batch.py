"""Batch inference: `graft predict` end to end vs model-only vs a naive loop.

    python benchmarks/bench_batch.py [--images 2000] [--repeats 3] [--workdir DIR]

Makes (once, cached in --workdir) 2,000 generated 640x480 JPEGs and a
MobileNetV2-size ONNX bundle (Keras MobileNetV2, random weights, 224x224,
converted with tf2onnx; TensorFlow is needed here, not by the runtime). Then
measures, in the same run, images/s of:

- graft predict: ``run_job`` over the files into a CSV (decode in threads,
  batched inference, chunked fsynced output), model load included;
- model-only: ``Classifier.predict_pixels`` on pre-decoded uint8 arrays, same
  batch size (the ceiling for the end-to-end job);
- naive loop: open, convert, resize and run one image at a time with a plain
  onnxruntime session (on a subset, it is slow).

Prints the median of --repeats runs of each and the ratios against the targets
(end-to-end >= 85% of model-only, >= 3x the naive loop).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from graft import bundle  # noqa: E402

SIZE = 224
LABELS = [f"class_{i}" for i in range(10)]


# ------------------------------------------------------------------ fixtures
def make_images(directory: Path, count: int, seed: int = 0) -> list[str]:
    """Photo-like 640x480 JPEGs: smooth random colour fields plus a little noise."""
    from PIL import Image

    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / f"img_{i:05d}.jpg" for i in range(count)]
    if all(p.exists() for p in paths):
        return [str(p) for p in paths]
    rng = np.random.default_rng(seed)
    for path in paths:
        coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((640, 480), Image.Resampling.BICUBIC)
        noisy = np.asarray(image, np.int16) + rng.integers(-12, 13, (480, 640, 3), dtype=np.int16)
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(path, quality=90)
    return [str(p) for p in paths]


def make_bundle(directory: Path) -> Path:
    """A bundle with a MobileNetV2 (224x224, random weights) ONNX export."""
    onnx_path = directory / "exports" / "model.onnx"
    if (directory / bundle.MANIFEST_NAME).exists() and onnx_path.exists():
        return directory
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import onnx
    import tensorflow as tf
    import tf2onnx

    keras = tf.keras
    inputs = keras.Input((SIZE, SIZE, 3), name="pixels")
    scaled = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)  # normalisation lives in the graph
    backbone = keras.applications.MobileNetV2(weights=None, input_shape=(SIZE, SIZE, 3),
                                              include_top=False, pooling="avg")
    outputs = keras.layers.Dense(len(LABELS), activation="softmax")(backbone(scaled))
    model = keras.Model(inputs, outputs)
    spec = (tf.TensorSpec((None, SIZE, SIZE, 3), tf.float32, name="pixels"),)
    function = tf.function(lambda x: model(x, training=False))
    proto, _ = tf2onnx.convert.from_function(function, input_signature=spec, opset=17)
    manifest = {
        "schema_version": bundle.SCHEMA_VERSION, "name": "bench-mobilenet_v2",
        "created": "2026-01-01T00:00:00+00:00", "labels": LABELS,
        "input": {"name": "pixels", "shape": [None, SIZE, SIZE, 3], "dtype": "float32", "layout": "NHWC"},
        "output": {"name": "probs", "shape": [None, len(LABELS)], "dtype": "float32"},
        "preprocessing": bundle.preprocessing_contract(SIZE, SIZE),
        "backbone": {"name": "mobilenet_v2", "weights": "random"},
    }
    onnx.helper.set_model_props(proto, {bundle.METADATA_KEY: json.dumps(bundle.portable_manifest(manifest))})
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    bundle.atomic_write_bytes(onnx_path, proto.SerializeToString())
    manifest["exports"] = [{"path": "exports/model.onnx", "format": "onnx", "precision": "float32",
                            "size_bytes": onnx_path.stat().st_size,
                            "sha256": bundle.sha256_file(onnx_path), "options": {"opset": 17}}]
    bundle.write_manifest(directory, manifest)
    return directory


# --------------------------------------------------------------------- peers
class Timer:
    """Wall time and this process's CPU time (all threads) of a block."""

    def __enter__(self) -> "Timer":
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu

    def per_image(self, count: int) -> tuple[float, float]:
        """(images/s, CPU milliseconds per image)."""
        return count / self.wall, 1000 * self.cpu / count


def bench_graft(model: Path, paths: list[str], out: Path, args) -> tuple[float, float]:
    from graft.runtime.batch import run_job

    with Timer() as timer:
        summary = run_job(model, paths, out, batch_size=args.batch_size, threads=args.threads,
                          model_threads=args.model_threads, overwrite=True, device="cpu")
    if summary.ok != len(paths):
        raise SystemExit(f"graft predict classified {summary.ok} of {len(paths)} images")
    return timer.per_image(len(paths))


def bench_model_only(model: Path, pixels: np.ndarray, args) -> tuple[float, float]:
    from graft.runtime.classifier import Classifier

    clf = Classifier.load(model, device="cpu", model_threads=args.model_threads)
    clf.predict_pixels(pixels[:args.batch_size], batch_size=args.batch_size)  # warm-up
    with Timer() as timer:
        probs = clf.predict_pixels(pixels, batch_size=args.batch_size)
    if probs.shape != (len(pixels), len(LABELS)):
        raise SystemExit(f"model-only returned {probs.shape}")
    return timer.per_image(len(pixels))


def bench_naive(model: Path, paths: list[str]) -> tuple[float, float]:
    """What a first script does: one image at a time, full decode, default session."""
    import onnxruntime as ort
    from PIL import Image

    session = ort.InferenceSession(str(model / "exports" / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    with Timer() as timer:
        for path in paths:
            image = Image.open(path).convert("RGB").resize((SIZE, SIZE), Image.Resampling.BILINEAR)
            session.run(None, {name: np.asarray(image, np.float32)[None]})
    return timer.per_image(len(paths))


# ---------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--naive-images", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None, help="graft decoding threads")
    parser.add_argument("--model-threads", type=int, default=None, help="onnxruntime intra-op threads")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "graft-bench-batch")
    args = parser.parse_args()

    from graft.runtime.preprocess import load_pixels

    model = make_bundle(args.workdir / "bundle")
    paths = make_images(args.workdir / "images", args.images)
    contract = bundle.read_manifest(model)["preprocessing"]
    pixels = np.stack([load_pixels(p, contract) for p in paths])
    print(f"{len(paths)} JPEGs 640x480, MobileNetV2 224x224 ONNX, batch {args.batch_size}, "
          f"{os.cpu_count()} CPUs, {args.repeats} repeats")

    peers = ("graft predict", "model-only", "naive loop")
    runs: dict[str, list[float]] = {peer: [] for peer in peers}
    cpu: dict[str, list[float]] = {peer: [] for peer in peers}
    for repeat in range(args.repeats):  # peers interleaved, so a busy machine hits them alike
        for peer, (rate, cpu_ms) in zip(peers, (
                bench_graft(model, paths, args.workdir / "out.csv", args),
                bench_model_only(model, pixels, args),
                bench_naive(model, paths[:args.naive_images]))):
            runs[peer].append(rate)
            cpu[peer].append(cpu_ms)
        print(f"  run {repeat + 1}: " + "  ".join(f"{k} {v[-1]:.1f}" for k, v in runs.items())
              + f"  (load average {os.getloadavg()[0]:.1f})", flush=True)
    median = {peer: statistics.median(runs[peer]) for peer in peers}
    cpu_ms = {peer: statistics.median(cpu[peer]) for peer in peers}
    paired = {peer: statistics.median(g / p for g, p in zip(runs["graft predict"], runs[peer]))
              for peer in peers}
    print("\n| peer | images/s (median) | graft predict vs peer (paired median) | CPU ms/image |")
    print("|---|---|---|---|")
    for peer in peers:
        print(f"| {peer} | {median[peer]:.1f} | {paired[peer]:.2f}x | {cpu_ms[peer]:.1f} |")
    vs_model = median["graft predict"] / median["model-only"]
    vs_naive = median["graft predict"] / median["naive loop"]
    print(f"\ngraft predict / model-only: {vs_model:.1%} of medians, {paired['model-only']:.1%} "
          f"paired, {cpu_ms['model-only'] / cpu_ms['graft predict']:.1%} in CPU time per image "
          f"(target >= 85%: {'met' if vs_model >= 0.85 else 'NOT met'})")
    print(f"graft predict / naive loop: {vs_naive:.2f}x of medians, {paired['naive loop']:.2f}x "
          f"paired, {cpu_ms['naive loop'] / cpu_ms['graft predict']:.2f}x in CPU time per image "
          f"(target >= 3x: {'met' if vs_naive >= 3 else 'NOT met'})")


if __name__ == "__main__":
    main()
