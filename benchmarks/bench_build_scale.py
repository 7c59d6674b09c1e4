"""graft build at scale: onnxruntime feature extraction against Keras, raw onnxruntime and a
warm cache, and the peak memory of large builds. Every peer is measured in the same run.

    python benchmarks/bench_build_scale.py [--images 2000] [--repeat 3] [--rss-sizes 10000 40000]

Each build is a real `graft build` process (TensorFlow import included), on class folders of
640x480 JPEGs cut from scikit-image's photographs, with efficientnet_lite0 at 224 px:

- cold (first build): an empty cache, so the backbone is converted to ONNX, then extracted;
- cold features: the converted backbone is cached, the features are not;
- keras: the same build with --extract keras (empty cache);
- warm: a rebuild with every feature cached.

Raw onnxruntime runs the cached backbone ONNX on pre-decoded arrays in this process (a default
session, batches of 32): the ceiling for the build's extraction rate. Peak RSS is the build
process's own (wait4), on tiny synthetic images at two sizes. Small first builds (one run each)
compare converting with Keras, which is how --extract auto's threshold was chosen. Goals: cold >= 2.5x faster than
keras end to end; extraction >= 80% of raw onnxruntime; warm >= 20x faster than cold.
Results: benchmarks/results/bench_build_scale.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import median, write_results  # noqa: E402

import numpy as np  # noqa: E402

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")


def photo_classes(root: Path, count: int, size=(640, 480), seed: int = 0) -> Path:
    """One class folder per photograph: random crops, scaled to ``size``, colour-jittered JPEGs."""
    import skimage.data
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(count):
        name = PHOTOS[i % len(PHOTOS)]
        photo = getattr(skimage.data, name)()
        h, w = photo.shape[:2]
        ch, cw = int(h * rng.uniform(0.5, 1.0)), int(w * rng.uniform(0.5, 1.0))
        top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        crop = photo[top:top + ch, left:left + cw].astype(np.float32) * rng.uniform(0.8, 1.2, 3)
        image = Image.fromarray(np.clip(crop, 0, 255).astype(np.uint8)).resize(size, Image.Resampling.BILINEAR)
        (root / name).mkdir(parents=True, exist_ok=True)
        image.save(root / name / f"{i:05d}.jpg", quality=int(rng.integers(85, 96)))
    return root


def tiny_classes(root: Path, count: int, seed: int = 0) -> Path:
    """``count`` 32x32 PNGs of noisy colours in four classes (for the memory runs)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    colours = np.array([(200, 40, 40), (40, 190, 60), (50, 60, 210), (200, 200, 60)], np.float32)
    for i in range(count):
        label = i % len(colours)
        pixels = np.clip(colours[label] + rng.normal(0, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
        (root / f"c{label}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(root / f"c{label}" / f"{i:06d}.png")
    return root


def graft_build(data: Path, out: Path, cache: Path, *args: str) -> dict:
    """One `graft build` process: wall seconds, its peak RSS (MiB) and its graft.json."""
    command = [sys.executable, "-m", "graft", "build", str(data), "-o", str(out), "--cache-dir", str(cache),
               "--overwrite", *args]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    stderr = process.stderr.read().decode(errors="replace")
    process.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"graft build {' '.join(args)} failed:\n{stderr[-2000:]}")
    manifest = json.loads((out / "graft.json").read_text())
    return {"seconds": seconds, "peak_rss_mib": usage.ru_maxrss / 1024, "manifest": manifest}


def raw_onnxruntime(model: Path, data: Path, count: int = 512) -> float:
    """Images/s of a default onnxruntime session on pre-decoded pixels, batches of 32."""
    import onnxruntime as ort

    from graft.bundle import preprocessing_contract
    from graft.runtime.preprocess import load_pixels

    files = sorted(data.rglob("*.jpg"))[:count]
    pixels = np.stack([load_pixels(f, preprocessing_contract(224, 224)) for f in files]).astype(np.float32)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    session.run(None, {name: pixels[:32]})
    started = time.perf_counter()
    for i in range(0, len(pixels), 32):
        session.run(None, {name: pixels[i:i + 32]})
    return len(pixels) / (time.perf_counter() - started)


def extraction(manifest: dict) -> dict:
    return manifest["dataset"]["extraction"]


def run_builds(work: Path, data: Path, repeat: int) -> tuple[dict, list[float]]:
    """``repeat`` rounds of every build, and of raw onnxruntime on the cached backbone, interleaved
    so that drift in the machine's load hits every peer alike."""
    runs: dict[str, list[dict]] = {"cold": [], "cold_features": [], "keras": [], "warm": []}
    raw: list[float] = []
    for r in range(repeat):
        cache = work / "cache"
        shutil.rmtree(cache, ignore_errors=True)
        runs["cold"].append(graft_build(data, work / "cold", cache, "--extract", "onnxruntime"))
        runs["warm"].append(graft_build(data, work / "warm", cache, "--extract", "onnxruntime"))
        shutil.rmtree(cache / "features")
        runs["cold_features"].append(graft_build(data, work / "cold_features", cache, "--extract", "onnxruntime"))
        raw.append(raw_onnxruntime(next((cache / "onnx").glob("*.onnx")), data))
        keras_cache = work / "keras-cache"
        shutil.rmtree(keras_cache, ignore_errors=True)
        runs["keras"].append(graft_build(data, work / "keras", keras_cache, "--extract", "keras"))
        print(f"run {r + 1}/{repeat}: " + "  ".join(f"{k} {v[-1]['seconds']:.1f} s" for k, v in runs.items())
              + f"  raw onnxruntime {raw[-1]:.0f} img/s", flush=True)
    return runs, raw


def summary(runs: list[dict]) -> dict:
    seconds = [r["seconds"] for r in runs]
    rates = [extraction(r["manifest"])["images_per_second"] for r in runs]
    return {"median_seconds": round(median(seconds), 2), "runs_seconds": [round(s, 2) for s in seconds],
            "extract_images_per_second": round(median(rates), 1) if all(rates) else None,
            "phases_seconds": extraction(runs[-1]["manifest"])["seconds"],
            "peak_rss_mib": round(max(r["peak_rss_mib"] for r in runs), 1)}


def memory_runs(work: Path, sizes: list[int]) -> list[dict]:
    """Peak RSS of builds on ``sizes`` tiny images (efficientnet_lite0 at 32 px, 1280 features).

    A first small build converts the backbone (the converter's own peak is not what grows with
    the data); each measured build then starts from an empty feature cache.
    """
    cache = work / "tiny-cache"
    warmup = tiny_classes(work / "tiny-warmup", 400, seed=1)
    graft_build(warmup, work / "tiny-warmup-bundle", cache, "--image-size", "32", "--epochs", "1",
                "--extract", "onnxruntime")
    rows = []
    for size in sizes:
        data = tiny_classes(work / f"tiny-{size}", size)
        shutil.rmtree(cache / "features", ignore_errors=True)
        result = graft_build(data, work / f"tiny-{size}-bundle", cache, "--image-size", "32", "--epochs", "2")
        dim = result["manifest"]["backbone"]["feature_dim"]
        rows.append({"images": size, "peak_rss_mib": round(result["peak_rss_mib"], 1),
                     "seconds": round(result["seconds"], 1),
                     "features_in_memory_mib": round(size * dim * 4 / 2**20, 1),
                     "shards": extraction(result["manifest"])["shards"]})
        print(f"memory: {size} images: peak RSS {rows[-1]['peak_rss_mib']:.0f} MiB "
              f"(all features would take {rows[-1]['features_in_memory_mib']:.0f} MiB)", flush=True)
        shutil.rmtree(data, ignore_errors=True)
    return rows


def small_runs(work: Path, sizes: list[int]) -> list[dict]:
    """First builds of small sets (empty cache): onnxruntime, converting first, against Keras.
    Where they cross is why --extract auto skips the conversion under SMALL_SET images."""
    rows = []
    for size in sizes:
        data = photo_classes(work / f"small-{size}", size, seed=size)
        row = {"images": size}
        for name, extract in (("onnxruntime_first_build", "onnxruntime"), ("keras", "keras")):
            cache = work / f"small-cache-{size}-{extract}"
            row[name] = round(graft_build(data, work / f"small-{size}-{extract}", cache,
                                          "--extract", extract)["seconds"], 2)
        rows.append(row)
        print(f"small set: {size} images: first build with conversion {row['onnxruntime_first_build']:.1f} s, "
              f"keras {row['keras']:.1f} s", flush=True)
        shutil.rmtree(data, ignore_errors=True)
    return rows


def build_section(work: Path, images: int, repeat: int) -> dict:
    """The 2,000-image builds and raw onnxruntime; prints the table and the ratios."""
    data = photo_classes(work / "photos", images)
    runs, raw = run_builds(work, data, repeat)
    results = {name: summary(r) for name, r in runs.items()}
    manifest = runs["cold"][-1]["manifest"]
    results["raw_onnxruntime"] = {"images_per_second": round(median(raw), 1), "runs": [round(x, 1) for x in raw]}
    results["parity"] = extraction(manifest)["parity"]
    results["accuracy"] = manifest["metrics"]["accuracy"]
    cold, keras, warm = (results[k]["median_seconds"] for k in ("cold", "keras", "warm"))
    results["ratios"] = ratios = {
        "cold_vs_keras": round(keras / cold, 2),
        "cold_features_vs_keras": round(keras / results["cold_features"]["median_seconds"], 2),
        "extraction_vs_raw_onnxruntime": round(results["cold_features"]["extract_images_per_second"]
                                               / results["raw_onnxruntime"]["images_per_second"], 2),
        "warm_vs_cold": round(cold / warm, 2),
        "extraction_phase_cold_vs_warm": round(
            sum(results["cold"]["phases_seconds"].values()) / sum(results["warm"]["phases_seconds"].values()), 1)}
    print(f"\n{images} JPEGs 640x480 -> 224 px, efficientnet_lite0, {repeat} runs each "
          f"(medians), {os.cpu_count()} CPUs")
    for name in ("cold", "cold_features", "keras", "warm"):
        r = results[name]
        print(f"  {name:14s} {r['median_seconds']:6.1f} s   extraction "
              f"{r['extract_images_per_second'] or 0:6.1f} img/s   peak RSS {r['peak_rss_mib']:.0f} MiB   "
              f"phases {r['phases_seconds']}   runs {r['runs_seconds']}")
    print(f"  raw onnxruntime on pre-decoded arrays: {results['raw_onnxruntime']['images_per_second']:.1f} img/s")
    print(f"  parity vs Keras: max |diff| {results['parity']['max_abs_diff']} on {results['parity']['sample']} "
          f"images; test accuracy {results['accuracy']:.3f}")
    print(f"cold vs keras: {ratios['cold_vs_keras']}x (goal >= 2.5x; with the ONNX cached "
          f"{ratios['cold_features_vs_keras']}x)")
    print(f"extraction vs raw onnxruntime: {ratios['extraction_vs_raw_onnxruntime']:.0%} (goal >= 80%)")
    print(f"warm vs cold: {ratios['warm_vs_cold']}x end to end (goal >= 20x); feature phase alone "
          f"{ratios['extraction_phase_cold_vs_warm']}x")
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3, help="0 skips the 2,000-image builds")
    parser.add_argument("--rss-sizes", type=int, nargs="*", default=[10000, 40000])
    parser.add_argument("--small-sizes", type=int, nargs="*", default=[250, 500, 1000])
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="graft-bench-build-scale-"))
    results = build_section(work, args.images, args.repeat) if args.repeat else {}
    memory = memory_runs(work, args.rss_sizes) if args.rss_sizes else []
    for row in memory:
        print(f"memory: {row['images']} images -> peak RSS {row['peak_rss_mib']:.0f} MiB "
              f"({row['features_in_memory_mib']:.0f} MiB of features kept in {row['shards']} shards)")
    small = small_runs(work, args.small_sizes) if args.small_sizes else []
    for row in small:
        print(f"small set: {row['images']} images -> first build {row['onnxruntime_first_build']:.1f} s "
              f"(converting), keras {row['keras']:.1f} s")
    write_results("bench_build_scale", {"images": args.images, "repeat": args.repeat, **results,
                                        "memory": memory, "small_sets": small})
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
