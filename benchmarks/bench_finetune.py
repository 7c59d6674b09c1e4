"""Head only, head with augmented views, and fine-tuning, on a small real-photo task.

    python benchmarks/bench_finetune.py [--seeds 0 1 2 3 4] [--crop 32] [--per-class 50] [--views 4]
                                        [--blocks 2 5] [--lrs 1e-5 1e-4]

The task: which of scikit-image's four colour photographs (astronaut, chelsea, coffee, rocket) a
small crop comes from. Each dataset draws ``--per-class`` random ``--crop`` x ``--crop`` crops
per photograph, with a random colour cast of +-20% per channel, saved as PNG; graft scales them
to 224 px. Small crops are often ambiguous (sky, skin, flat background), so the frozen
EfficientNet-Lite0 features with a new head reach about 80-90%, not 100%. The split is graft's
own (val 15%, test 40%: about 87 training, 36 validation and 77 test images).

For every seed a new dataset is drawn and each configuration is built in this process with
efficientnet_lite0 and its ImageNet weights, from a warm feature cache (the originals' features
are extracted once per dataset, before the timed builds):

- head only (graft's default build);
- head + K augmented views per training image (their features extracted on first use, cached);
- fine-tuned top N blocks, for each N in ``--blocks`` and each learning rate in ``--lrs``.

Printed and written to benchmarks/results/bench_finetune.json: held-out (test) accuracy as a
median over seeds and as the change against the head alone on the same dataset (and on how many
seeds it was better, the same or worse), which weights each fine-tuning run kept, and the build's
wall time (median). About 12 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import median, write_results  # noqa: E402

import numpy as np  # noqa: E402

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")


def crops(root: Path, crop: int, per_class: int, seed: int) -> Path:
    """One class folder per photograph of ``per_class`` random crops with a colour cast."""
    import skimage.data
    from PIL import Image

    rng = np.random.default_rng(seed)
    for name in PHOTOS:
        photo = getattr(skimage.data, name)()
        (root / name).mkdir(parents=True, exist_ok=True)
        height, width = photo.shape[:2]
        for i in range(per_class):
            top, left = rng.integers(0, height - crop + 1), rng.integers(0, width - crop + 1)
            patch = photo[top:top + crop, left:left + crop].astype(np.float32) * rng.uniform(0.8, 1.2, 3)
            Image.fromarray(np.clip(patch, 0, 255).astype(np.uint8)).save(root / name / f"s{seed}_{i:03d}.png")
    return root


def configurations(views: int, blocks: list[int], lrs: list[float]) -> dict[str, dict]:
    found = {"head only": {}, f"head + {views} views": {"augment_views": views}}
    for n in blocks:
        for lr in lrs:
            found[f"fine-tune top {n}, lr {lr:g}"] = {"fine_tune": n, "fine_tune_lr": lr}
    return found


def run(data: Path, out: Path, cache: Path, seed: int, extra: dict) -> dict:
    from graft.builder.build import BuildOptions, build_bundle

    options = BuildOptions(progress=False, cache_dir=str(cache), overwrite=True, seed=seed,
                           val_split=0.15, test_split=0.4, **extra)
    started = time.perf_counter()
    manifest = build_bundle(data, out, options)
    seconds = time.perf_counter() - started
    stages = manifest["training"]["stages"]
    row = {"seconds": round(seconds, 2), "test_accuracy": manifest["metrics"]["accuracy"],
           "test_images": manifest["metrics"]["count"],
           "epochs": [stage["epochs_run"] for stage in stages],
           "stage_seconds": [stage["seconds"] for stage in stages]}
    if extra.get("augment_views"):
        row["views"] = stages[0]["settings"]["views"]
    if extra.get("fine_tune"):
        tuned = stages[-1]
        row.update(kept=tuned["kept"], val_loss_before=tuned["metrics_before"]["val"]["loss"],
                   val_loss_after=tuned["metrics_after"]["val"]["loss"],
                   test_accuracy_before=tuned["metrics_before"]["test"]["accuracy"])
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--crop", type=int, default=32)
    parser.add_argument("--per-class", type=int, default=50)
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--blocks", type=int, nargs="+", default=[2, 5])
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-5, 1e-4])
    args = parser.parse_args()

    from graft.builder.build import BuildOptions, build_bundle

    configs = configurations(args.views, args.blocks, args.lrs)
    runs: dict[str, list[dict]] = {name: [] for name in configs}
    work = Path(tempfile.mkdtemp(prefix="graft-bench-finetune-"))
    try:
        cache = work / "cache"
        for seed in args.seeds:
            data = crops(work / f"data-{seed}", args.crop, args.per_class, seed)
            started = time.perf_counter()  # extract the originals' features once, untimed below
            build_bundle(data, work / "warm", BuildOptions(progress=False, cache_dir=str(cache),
                                                           overwrite=True, epochs=1))
            print(f"seed {seed}: dataset of {len(PHOTOS) * args.per_class} crops, features extracted "
                  f"in {time.perf_counter() - started:.1f} s", flush=True)
            for name, extra in configs.items():
                row = run(data, work / "bundle", cache, seed, extra)
                runs[name].append(row)
                print(f"  {name:28s} test {row['test_accuracy']:.4f}  {row['seconds']:6.1f} s  "
                      + (f"kept {row['kept']}, val loss {row['val_loss_before']:.4f} -> "
                         f"{row['val_loss_after']:.4f}" if "kept" in row else ""), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    table = summarise(runs)
    print(f"\n{'configuration':28s} {'test accuracy':>13s} {'min..max':>13s} {'vs head':>8s} "
          f"{'better/same/worse':>17s} {'wall s':>7s}  kept fine-tuned")
    for name, row in table.items():
        kept = f"{row['fine_tuned_kept']}/{len(args.seeds)}" if "fine_tuned_kept" in row else ""
        print(f"{name:28s} {row['test_accuracy']:13.4f} {row['test_min']:.4f}..{row['test_max']:.4f} "
              f"{row['change_vs_head']:+8.4f} {'/'.join(map(str, row['better_same_worse'])):>17s} "
              f"{row['seconds']:7.1f}  {kept}")
    write_results("bench_finetune", {
        "task": f"which of {', '.join(PHOTOS)} a {args.crop}x{args.crop} crop comes from; "
                f"{args.per_class} crops per photograph per seed",
        "backbone": "efficientnet_lite0 (ImageNet weights), 224 px", "seeds": args.seeds,
        "split": {"val": 0.15, "test": 0.4}, "summary": table, "runs": runs})


def summarise(runs: dict[str, list[dict]]) -> dict[str, dict]:
    """Medians over seeds (test accuracy, wall time), and each configuration against the head
    alone on the same dataset: the median change in test accuracy, and on how many seeds it was
    better, the same or worse; for fine-tuning, how often it kept its own weights."""
    table = {}
    baseline = [row["test_accuracy"] for row in next(iter(runs.values()))]
    for name, rows in runs.items():
        accuracies = [row["test_accuracy"] for row in rows]
        change = [a - b for a, b in zip(accuracies, baseline)]
        entry = {"test_accuracy": round(median(accuracies), 4), "test_min": min(accuracies),
                 "test_max": max(accuracies), "seconds": round(median([r["seconds"] for r in rows]), 1),
                 "change_vs_head": round(median(change), 4),
                 "better_same_worse": [sum(c > 0 for c in change), sum(c == 0 for c in change),
                                       sum(c < 0 for c in change)]}
        if rows and "kept" in rows[0]:
            entry["fine_tuned_kept"] = sum(row["kept"] == "fine-tuned" for row in rows)
            entry["val_loss_change"] = round(median([r["val_loss_after"] - r["val_loss_before"]
                                                     for r in rows]), 4)
        table[name] = entry
    return table


if __name__ == "__main__":
    main()
