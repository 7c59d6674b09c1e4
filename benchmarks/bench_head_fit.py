"""Does the head fit small data? Held-out accuracy of graft's head with and without the
standardisation of its inputs, on every bench_choose candidate (and the raw-pixel baseline).

    python benchmarks/bench_head_fit.py [--workdir DIR] [--tasks a,b] [--min-steps 300]

Peers, in one run, on the same features, splits and seed (build defaults: Adam 1e-3, 30
epochs, batch 32, dropout 0.2, early stopping with patience 5 on the validation loss):

- ``raw``: the head as it was, a dense softmax on the raw pooled features (its
  standardisation set to the identity);
- ``standardised``: the head as graft builds it now, inputs standardised by the
  training features' mean and variance;
- ``standardised_min_steps``: the same with enough epochs that training runs at least
  ``--min-steps`` optimizer steps (early stopping still guards): the build's default now.

Each row is the held-out (test split) accuracy; the summary gives per peer the median over
every (task, candidate), and the median of the paired differences against ``raw``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import write_results  # noqa: E402
from choose_tasks import TASKS  # noqa: E402
import bench_choose  # noqa: E402

PEERS = ("raw", "standardised", "standardised_min_steps")


def train_and_test(x, y, split, classes: int, peer: str, min_steps: int) -> float:
    import keras

    from graft.builder import head as headmod

    keras.utils.set_random_seed(0)
    x = np.asarray(x, np.float32)
    train, val, test = (split == "train"), (split == "val"), (split == "test")
    steps = min_steps if peer == "standardised_min_steps" else 0
    moments = headmod.feature_moments
    if peer == "raw":   # the identity standardisation: the head as it was
        headmod.feature_moments = lambda rows: (np.zeros(x.shape[1]), np.ones(x.shape[1]))
    try:
        head, stage = headmod.train_head(x[train], y[train], (x[val], y[val]), classes, epochs=30,
                                         batch_size=32, lr=1e-3, dropout=0.2, patience=5,
                                         min_steps=steps)
    finally:
        headmod.feature_moments = moments
    correct = headmod.predict_rows(head, x[test], classes).argmax(axis=1) == y[test]
    return float(correct.mean()), stage["epochs_run"], int(test.sum())


def run_task(name: str, root: Path, cache: Path, min_steps: int) -> list[dict]:
    from graft import bundle
    from graft.builder import data as datamod
    from graft.builder import probe as probemod
    from graft.builder import probe_features as pf
    from graft.builder.features import read_pixels
    from graft.progress import Progress

    data = TASKS[name](root / name)
    options = bench_choose.probe_options(cache)
    samples = datamod.scan(data)
    labels = sorted({s.label for s in samples})
    rows = []
    with Progress(False) as progress:
        for family in options.families():
            ext, _ = probemod._extract(family, samples, cache, options, progress)
            y = np.array([labels.index(s.label) for s in ext.samples])
            split = np.array([datamod.split_of(s.rel, **bench_choose.SPLITS) for s in ext.samples])
            feats = ext.rows.take(np.arange(len(ext.samples)))
            for cut, part in family.slices().items():
                rows.append(_row(name, pf.label(family.backbone, family.image_size, cut), feats[:, part],
                                 y, split, len(labels), min_steps))
        sha = dict(zip(ext.samples, ext.content_sha))
        contract = bundle.preprocessing_contract(32, 32)
        pixels = np.stack([read_pixels(s.path, sha[s], contract) for s in ext.samples])
        rows.append(_row(name, "baseline (raw 32x32 pixels)", pixels.reshape(len(pixels), -1) / 255.0,
                         y, split, len(labels), min_steps))
    return rows


def _row(task, candidate, x, y, split, classes, min_steps) -> dict:
    row = {"task": task, "candidate": candidate}
    for peer in PEERS:
        accuracy, epochs, n = train_and_test(x, y, split, classes, peer, min_steps)
        row[peer], row[f"{peer}_epochs"], row["test_images"] = round(accuracy, 4), epochs, n
    print(f"{task:14s} {candidate:34s} n={n:3d} " + "  ".join(f"{p} {row[p]:.1%}" for p in PEERS), flush=True)
    return row


def summary(rows: list[dict]) -> dict:
    out = {"pairs": len(rows)}
    for peer in PEERS:
        out[f"median_{peer}"] = round(float(np.median([r[peer] for r in rows])), 4)
        out[f"mean_{peer}"] = round(float(np.mean([r[peer] for r in rows])), 4)
        if peer != "raw":
            diff = np.array([r[peer] - r["raw"] for r in rows])
            out[f"median_gain_{peer}_points"] = round(100 * float(np.median(diff)), 1)
            out[f"wins_losses_{peer}"] = [int((diff > 0).sum()), int((diff < 0).sum())]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--min-steps", type=int, default=300)
    parser.add_argument("--sizes", default="128", help="comma-separated resolutions")
    args = parser.parse_args()
    bench_choose.SIZES = [int(v) for v in args.sizes.split(",")]
    root = Path(args.workdir or tempfile.mkdtemp(prefix="graft-bench-head-"))
    rows = []
    for name in [t for t in args.tasks.split(",") if t]:
        rows += run_task(name, root, root / "cache", args.min_steps)
    result = {"tasks": args.tasks.split(","), "splits": bench_choose.SPLITS, "min_steps": args.min_steps,
              "image_sizes": bench_choose.SIZES, "rows": rows, "summary": summary(rows)}
    print(result["summary"])
    write_results("bench_head_fit", result)


if __name__ == "__main__":
    main()
