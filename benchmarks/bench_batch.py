"""Batch inference: `graft predict` end to end vs model-only vs a naive loop.

    python benchmarks/bench_batch.py [--images 2000] [--repeats 3] [--workdir DIR]

Makes (once, cached in --workdir) 2,000 640x480 JPEGs cut from scikit-image's
photographs and a bundle made by `graft build` + `graft export` (EfficientNet-Lite0,
224x224, ONNX float32; benchmarks/common.py). Then measures, in the same run,
images/s of:

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
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import bench_bundle, photo_jpegs, write_results  # noqa: E402

from graft import bundle  # noqa: E402


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
        summary = run_job(model, paths, out, batch_size=args.batch_size, decode_threads=args.threads,
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
    if probs.shape != (len(pixels), len(clf.labels)):
        raise SystemExit(f"model-only returned {probs.shape}")
    return timer.per_image(len(pixels))


def bench_naive(model: Path, paths: list[str]) -> tuple[float, float]:
    """What a first script does: one image at a time, full decode, default session."""
    import onnxruntime as ort
    from PIL import Image

    session = ort.InferenceSession(str(model / "exports" / "model.float32.onnx"),
                                   providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    height, width = bundle.read_manifest(model)["preprocessing"]["size"]
    with Timer() as timer:
        for path in paths:
            image = Image.open(path).convert("RGB").resize((width, height), Image.Resampling.BILINEAR)
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

    model = bench_bundle(args.workdir)
    paths = photo_jpegs(args.workdir / "images", args.images)
    contract = bundle.read_manifest(model)["preprocessing"]
    pixels = np.stack([load_pixels(p, contract) for p in paths])
    print(f"{len(paths)} JPEGs 640x480, EfficientNet-Lite0 224x224 ONNX float32, batch {args.batch_size}, "
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
    write_results("bench_batch", {
        "setup": {"images": len(paths), "image_size": [640, 480], "model": "efficientnet_lite0 224 ONNX float32",
                  "batch_size": args.batch_size, "repeats": args.repeats},
        "images_per_s": {peer: round(median[peer], 1) for peer in peers},
        "cpu_ms_per_image": {peer: round(cpu_ms[peer], 2) for peer in peers},
        "runs": runs,
        "graft_vs_model_only": round(vs_model, 3), "graft_vs_naive": round(vs_naive, 2),
        "ceiling_in_cpu_time": round(cpu_ms["model-only"] / cpu_ms["graft predict"], 3),
        "targets": {"graft_vs_model_only": 0.85, "graft_vs_naive": 3.0}})


if __name__ == "__main__":
    main()
