"""int8 vs float32 on an EfficientNet-Lite0 bundle at 224 px, ONNX Runtime and LiteRT, in one process.

    python benchmarks/bench_quantize.py [BUNDLE] [--rounds 7] [--threads N]

BUNDLE is a graft bundle at 224 px; without it, one is made by graft build on
scikit-image's surface photographs with EfficientNet-Lite0 (benchmarks/common.py).
Missing exports are made first with `graft export --format all --precision all`. Prints, for each format, the median
batch-32 throughput and batch-1 latency of every precision over interleaved
rounds, the int8 / float32 ratios, and the accuracy table of `graft verify`.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np


def ensure_exports(bundle_dir: Path) -> None:
    from graft import bundle
    from graft.errors import CheckFailed
    from graft.exporters import registry
    from graft.exporters.export import export_bundle

    manifest = bundle.read_manifest(bundle_dir)
    missing = [t for t in registry.TARGETS.values()
               if bundle.find_export(manifest, t.format, t.precision) is None]
    if missing:
        try:
            export_bundle(bundle_dir, missing, echo=print)
        except CheckFailed as exc:  # flagged files are still measured; the table shows why
            print(f"note: {exc}")


def timed(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def measure(bundle_dir: Path, rounds: int, threads: int) -> dict:
    from graft import bundle
    from graft.runtime.engines import open_engine

    manifest = bundle.read_manifest(bundle_dir)
    size = manifest["preprocessing"]["size"]
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 256, (32, *size, 3), dtype=np.uint8)
    engines = {(row["format"], row["precision"]): open_engine(bundle_dir / row["path"], device="cpu",
                                                               threads=threads)
               for row in manifest["exports"]}
    samples: dict = {key: {"batch32": [], "batch1": []} for key in engines}
    for _ in range(rounds):  # interleave, so drift in the machine hits every engine alike
        for key, engine in engines.items():
            samples[key]["batch32"].append(32 / timed(lambda: engine.run(batch), 1))
            samples[key]["batch1"].append(timed(lambda: engine.run(batch[:1]), 10) * 1e3)
    return {key: {"throughput": float(np.median(v["batch32"])), "p50_ms": float(np.median(v["batch1"]))}
            for key, v in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path, nargs="?", default=None)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    if args.bundle is None:
        import sys
        import tempfile

        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from common import bench_bundle

        args.bundle = bench_bundle(Path(tempfile.gettempdir()) / "graft-bench-quantize")
    ensure_exports(args.bundle)
    results = measure(args.bundle, args.rounds, args.threads)
    print(f"\nCPU: {platform.processor() or platform.machine()}, {args.threads} threads, "
          f"median of {args.rounds} interleaved rounds")
    print(f"{'format':<8}{'precision':<11}{'batch-32 img/s':>16}{'batch-1 ms':>12}{'vs float32':>12}")
    for (fmt, precision), r in sorted(results.items()):
        base = results.get((fmt, "float32"))
        ratio = r["throughput"] / base["throughput"] if base else float("nan")
        print(f"{fmt:<8}{precision:<11}{r['throughput']:>16.1f}{r['p50_ms']:>12.2f}{ratio:>11.2f}x")
    for fmt in ("onnx", "tflite"):
        if (fmt, "int8") in results and (fmt, "float32") in results:
            ratio = results[(fmt, "int8")]["throughput"] / results[(fmt, "float32")]["throughput"]
            print(f"{fmt} int8 / float32 batch-32 throughput: {ratio:.2f}x")

    from graft.exporters.verify import markdown, verify_bundle

    report = verify_bundle(args.bundle, model_threads=args.threads)
    print("\n" + markdown(report))
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import write_results

    write_results("bench_quantize", {
        "setup": {"bundle": args.bundle.name, "rounds": args.rounds, "threads": args.threads,
                  "test_images": report["images"], "keras_accuracy": report["keras_accuracy"]},
        "speed": [{"format": f, "precision": p, "throughput_batch32": round(r["throughput"], 1),
                   "p50_ms_batch1": round(r["p50_ms"], 2)} for (f, p), r in sorted(results.items())],
        "verify": [{k: row.get(k) for k in ("format", "precision", "size_bytes", "accuracy", "accuracy_drop",
                                            "top1_agreement", "max_abs_diff", "passed", "breaches")}
                   for row in report["rows"]]})


if __name__ == "__main__":
    main()
