"""Does `graft probe` choose well? Its estimates and picks against every candidate built for real.

    python benchmarks/bench_choose.py [--workdir DIR] [--tasks a,b] [--time-images 500]

Five small tasks from real photographs that scikit-image ships (cut in different
ways and sizes, and its LFW face/non-face subset as it ships: 200 images; the others
320 to 324), half of each held out as the test split (about 160 images: one image is
0.6 points) and 15% as validation. For each task, in one run:

1. `graft probe` (EfficientNet-Lite0 and -Lite2, native and 128 px, cuts at the
   ends of stages 5 and 6 and the top: 12 candidates), on the training and
   validation splits only;
2. every candidate built for real: graft's head trained on the build's features
   (the training split, early stopping on the validation split, build defaults,
   seed 0) and scored on the test split, which the probe never saw; the same head
   on raw 32x32 pixels is the no-transfer baseline;
3. Kendall's tau of the probe's estimates against those held-out accuracies, the
   regret of the pick (best held-out accuracy minus the pick's, with its paired
   95% bootstrap interval over the test images and their n), whether the
   transfer verdict matches the held-out truth (transfer wins with a paired 95%
   interval above zero), and, under a latency budget (the median float32 latency
   of the candidates), `graft build --backbone auto` for real: the pick is
   built, exported at its precision by `graft export` (verified) and the file
   measured against the budget.

The time goal is checked on its own task of ``--time-images`` images (real photo
tiles, the build's default splits: the probe scores the training and validation
70%): the probe's wall time, first conversions excluded (run once to warm the
cache, then timed), against building every candidate with `graft build`, timed on
the smallest task (lfw_faces).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, write_results  # noqa: E402
from choose_tasks import TASKS, write_tiles  # noqa: E402

BACKBONES = ["efficientnet_lite0", "efficientnet_lite2"]
SMALL_TASK = "lfw_faces"   # the task whose every candidate is built for the time comparison
SIZES = None   # None: each backbone's native size and 128 (--sizes)
SPLITS = {"val_split": 0.15, "test_split": 0.5}   # half tested: ~160 test images a task
BUILD_SPLITS = {"val_split": 0.15, "test_split": 0.15}   # the time goal: a user's 500 images, build defaults


def probe_options(cache: Path, splits: dict | None = None, **extra):
    from graft.builder.probe import ProbeOptions

    return ProbeOptions(backbones=BACKBONES, image_sizes=SIZES, cache_dir=str(cache), progress=False,
                        **(splits or SPLITS), **extra)


def held_out(data: Path, result: dict, options) -> tuple[dict, float, dict]:
    """Every candidate's and the baseline's test accuracy, trained as the build trains its head."""
    import keras

    from graft import bundle
    from graft.builder import data as datamod
    from graft.builder import probe as probemod
    from graft.builder import probe_features as pf
    from graft.builder.features import read_pixels
    from graft.builder.head import predict_rows, train_head
    from graft.progress import Progress

    samples = datamod.scan(data)
    labels = result["labels"]
    accuracy, correct = {}, {}
    with Progress(False) as progress:
        for family in options.families():
            ext, _ = probemod._extract(family, samples, Path(options.cache_dir), options, progress)
            y = np.array([labels.index(s.label) for s in ext.samples])
            split = np.array([datamod.split_of(s.rel, SPLITS["val_split"], SPLITS["test_split"])
                              for s in ext.samples])
            rows = ext.rows.take(np.arange(len(ext.samples)))
            for cut, part in family.slices().items():
                cid = pf.label(family.backbone, family.image_size, cut)
                correct[cid] = _train_and_test(rows[:, part], y, split, len(labels), keras, train_head,
                                               predict_rows)
                accuracy[cid] = float(correct[cid].mean())
        contract = bundle.preprocessing_contract(32, 32)
        sha = dict(zip(ext.samples, ext.content_sha))
        pixels = np.stack([read_pixels(s.path, sha[s], contract) for s in ext.samples])
        base = _train_and_test(pixels.reshape(len(pixels), -1) / 255.0, y, split, len(labels), keras,
                               train_head, predict_rows)
    return accuracy, float(base.mean()), {**correct, "baseline": base}


def _train_and_test(x, y, split, classes, keras, train_head, predict_rows) -> np.ndarray:
    from graft.builder.head import MIN_STEPS

    keras.utils.set_random_seed(0)
    x = np.asarray(x, np.float32)
    train, val, test = (split == "train"), (split == "val"), (split == "test")
    head, _ = train_head(x[train], y[train], (x[val], y[val]) if val.any() else None, classes,
                         epochs=30, batch_size=32, lr=1e-3, dropout=0.2, patience=5, min_steps=MIN_STEPS)
    return predict_rows(head, x[test], classes).argmax(axis=1) == y[test]


def truth(correct: dict, pick: str) -> dict:
    """Held-out truth about transfer: the pick against the raw-pixel baseline, paired."""
    from graft.builder.probe_scores import paired_ci

    diff, interval = paired_ci(correct[pick], correct["baseline"])
    return {"difference": diff, "interval": interval, "helps": bool(diff > 0 and interval[0] > 0),
            "n": int(len(correct["baseline"]))}


def run_task(name: str, root: Path, cache: Path) -> dict:
    from scipy.stats import kendalltau

    from graft.builder.probe import run_probe
    from graft.builder.probe_choice import recommend
    from graft.builder.probe_scores import paired_ci

    data = TASKS[name](root / name)
    options = probe_options(cache)
    started = time.perf_counter()
    result = run_probe(data, options)
    probe_seconds = time.perf_counter() - started
    accuracy, baseline, correct = held_out(data, result, options)
    ids = [c["id"] for c in result["candidates"]]
    estimates = [c["estimate"] for c in result["candidates"]]
    tau, p_value = kendalltau(estimates, [accuracy[i] for i in ids])
    pick = result["recommendation"]["candidate"]
    real = truth(correct, pick)
    best = max(accuracy, key=accuracy.get)
    regret, regret_interval = paired_ci(correct[best], correct[pick])
    float32 = sorted(o["latency_ms"] for o in result["options"] if o["precision"] == "float32")
    budget = round(float(np.median(float32)), 2)
    cands = {c["id"]: c for c in result["candidates"]}
    budget_pick = recommend(result["options"], cands, budget, None)
    fitting = {o["candidate"] for o in result["options"] if o["latency_ms"] <= budget}
    export = build_pick(data, root / f"{name}-bundle", cache, result, budget_pick, budget)
    row = {"task": name, "images": result["images"], "test_images": real["n"], "classes": result["classes"],
           "candidates": len(ids), "kendall_tau": round(float(tau), 3), "tau_p_value": round(float(p_value), 4),
           "pick": pick, "pick_estimate": cands[pick]["estimate"], "pick_held_out": round(accuracy[pick], 4),
           "best": best, "best_held_out": round(max(accuracy.values()), 4),
           "regret_points": round(100 * regret, 1),
           "regret_interval_points": [round(100 * v, 1) for v in regret_interval],
           "baseline_held_out": round(baseline, 4), "baseline_estimate": result["baseline"]["estimate"],
           "verdict": result["verdict"], "truth": real,
           "verdict_right": result["verdict"]["transfer_helps"] == real["helps"],
           "budget_ms": budget, "budget_pick": f"{budget_pick['candidate']} {budget_pick['precision']}",
           "budget_pick_regret_points": round(100 * (max(accuracy[c] for c in fitting) - accuracy[budget_pick["candidate"]]), 1),
           "export": {k: export.get(k) for k in ("path", "precision", "latency_ms", "size_mb", "meets_budget",
                                                  "verified", "check_failed")},
           "int8_refused": [c["id"] for c in result["candidates"] if c.get("int8_agreement", {}).get("breaches")],
           "int8_agreement": {c["id"]: c["int8_agreement"]["top1_agreement"] for c in result["candidates"]
                              if "int8_agreement" in c},
           "probe_seconds": round(probe_seconds, 1),
           "held_out": {i: round(accuracy[i], 4) for i in ids}, "estimates": dict(zip(ids, estimates))}
    print(f"{name}: tau {row['kendall_tau']:+.2f} (n={len(ids)}), pick {pick} held-out "
          f"{row['pick_held_out']:.1%} vs best {row['best_held_out']:.1%} (regret {row['regret_points']} pts, "
          f"95% CI {row['regret_interval_points']}, n={real['n']}), "
          f"baseline {baseline:.1%}; verdict {'helps' if result['verdict']['transfer_helps'] else 'no'} / "
          f"truth {'helps' if real['helps'] else 'no'}; budget {budget} ms -> {row['budget_pick']}, export "
          f"{export['latency_ms']:.2f} ms ({'meets' if export['meets_budget'] else 'MISSES'})", flush=True)
    return row


def build_pick(data: Path, out: Path, cache: Path, result: dict, pick: dict, budget: float) -> dict:
    """What `graft build --backbone auto --latency-ms BUDGET` does after its probe (the probe
    already ran): build the pick, export it at its precision (verified), measure the file."""
    from graft.builder.build import BuildOptions, build_bundle
    from graft.cli.auto import export_for_budget
    from graft.errors import CheckFailed

    options = BuildOptions(backbone=pick["backbone"], image_size=pick["image_size"], progress=False,
                           cut_layer=None if pick["cut_layer"] == "top" else pick["cut_layer"],
                           cache_dir=str(cache), overwrite=True, **SPLITS)
    build_bundle(data, out, options, probe={**result, "recommendation": pick})
    try:
        return export_for_budget(out, pick, {"latency_ms": budget, "size_mb": None}, None, lambda line: None)
    except CheckFailed:  # recorded in graft.json: the export missed the budget or failed its check
        from graft import bundle

        return bundle.read_manifest(out)["probe"]["export"]


def time_goal(root: Path, cache: Path, images: int, small_task: str) -> dict:
    """The probe on ``images`` photo tiles against `graft build` of every candidate.

    Timed twice: features computed (a cache holding only the converted weights and ONNX
    feature models, as after a first run) and features cached (a second probe).
    """
    import shutil

    from graft.builder.build import BuildOptions, build_bundle
    from graft.builder.probe import run_probe

    data = write_tiles(root / "time", images)   # the tasks converted the same families already
    cold_cache = root / "cold-cache"
    shutil.rmtree(cold_cache, ignore_errors=True)   # no features left from an earlier run
    for part in ("weights", "onnx"):
        shutil.copytree(cache / part, cold_cache / part, dirs_exist_ok=True)
    started = time.perf_counter()
    cold_result = run_probe(data, probe_options(cold_cache, BUILD_SPLITS))
    cold = time.perf_counter() - started
    started = time.perf_counter()
    run_probe(data, probe_options(cold_cache, BUILD_SPLITS))   # the same probe again: features cached now
    warm = time.perf_counter() - started
    small = TASKS[small_task](root / f"{small_task}-all")
    probe_small = run_probe(small, probe_options(cache))
    build_cache = root / "build-all-cache"   # converted weights only: builds extract for themselves
    shutil.rmtree(build_cache, ignore_errors=True)
    shutil.copytree(cache / "weights", build_cache / "weights", dirs_exist_ok=True)
    started = time.perf_counter()
    for cand in probe_small["candidates"]:
        cut = None if cand["cut_layer"] == "top" else cand["cut_layer"]
        build_bundle(small, root / "all" / cand["id"].replace("/", "_"),
                     BuildOptions(backbone=cand["backbone"], image_size=cand["image_size"], cut_layer=cut,
                                  progress=False, cache_dir=str(build_cache), **SPLITS))
    build_all = time.perf_counter() - started
    return {"images": cold_result["images"], "images_extracted": images,
            "candidates": len(cold_result["candidates"]),
            "probe_seconds_features_computed": round(cold, 1), "probe_seconds_features_cached": round(warm, 1),
            "probe_parts_features_computed": cold_result["seconds"], "small_task": small_task,
            "small_task_probe_seconds": probe_small["seconds"]["total"],
            "small_task_build_all_seconds": round(build_all, 1),
            "build_all_over_probe": round(build_all / probe_small["seconds"]["total"], 2)}


def summary(rows: list[dict]) -> dict:
    return {"tasks": len(rows), "regret_within_2_points": sum(r["regret_points"] <= 2 for r in rows),
            "regret_interval_includes_0": sum(r["regret_interval_points"][0] <= 0 for r in rows),
            "verdict_right": sum(r["verdict_right"] for r in rows),
            "budget_met": sum(r["export"]["meets_budget"] for r in rows),
            "median_kendall_tau": float(np.nanmedian([r["kendall_tau"] for r in rows])),
            "kendall_tau_defined": int(sum(not np.isnan(r["kendall_tau"]) for r in rows))}  # nan: all tied


def markdown(results: dict) -> str:
    """The docs' table, from a results file."""
    lines = ["| task | images (scored / test) | Kendall tau | pick | pick held-out | best held-out "
             "| regret (95% CI) | baseline held-out | verdict / truth | budget | export measured |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["tasks"]:
        v, t, e = r["verdict"], r["truth"], r["export"]
        lines.append(
            f"| {r['task']} | {r['images']} / {r['test_images']} | {r['kendall_tau']:+.2f} (p {r['tau_p_value']:.2f}) "
            f"| {r['pick']} | {r['pick_held_out']:.1%} | {r['best_held_out']:.1%} | {r['regret_points']} pts "
            f"[{r['regret_interval_points'][0]}, {r['regret_interval_points'][1]}] "
            f"| {r['baseline_held_out']:.1%} | {'helps' if v['transfer_helps'] else 'no'} / "
            f"{'helps' if t['helps'] else 'no'} ({'right' if r['verdict_right'] else 'wrong'}) "
            f"| {r['budget_ms']} ms: {r['budget_pick']} | {e['precision']} {e['latency_ms']:.2f} ms "
            f"{'meets' if e['meets_budget'] else 'misses'}{'' if e.get('verified', True) else ' (int8 failed its check)'} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--time-images", type=int, default=500)
    parser.add_argument("--skip-time", action="store_true")
    parser.add_argument("--sizes", default=None, help="comma-separated resolutions (default: native and 128)")
    parser.add_argument("--table", action="store_true", help="print the docs' table from the results file")
    parser.add_argument("--time-only", action="store_true", help="only the time goal, written to "
                        "results/bench_choose_time.json (needs a --workdir whose cache holds the converted models)")
    args = parser.parse_args()
    global SIZES
    SIZES = [int(v) for v in args.sizes.split(",")] if args.sizes else None
    if args.table:
        print(markdown(json.loads((RESULTS / "bench_choose.json").read_text())))
        return
    root = Path(args.workdir or tempfile.mkdtemp(prefix="graft-bench-choose-"))
    cache = root / "cache"
    rows, results = [], {}
    for name in [t for t in args.tasks.split(",") if t]:
        rows.append(run_task(name, root, cache))
        results = {"tasks": rows, "backbones": BACKBONES, "image_sizes": SIZES or "native and 128",
                   "splits": SPLITS, "summary": summary(rows)}
        write_results("bench_choose", results)   # after every task: a long run keeps what it measured
    if args.time_only:   # its own file: the tasks may still be writing theirs
        results = {"time": time_goal(root, cache, args.time_images, SMALL_TASK)}
        write_results("bench_choose_time", results)
        return
    if not args.skip_time:
        results["time"] = time_goal(root, cache, args.time_images, SMALL_TASK)
        t = results["time"]
        print(f"time: probe of {t['candidates']} candidates on {t['images_extracted']} images: "
              f"{t['probe_seconds_features_computed']} s (features computed), "
              f"{t['probe_seconds_features_cached']} s (cached); building every candidate of the "
              f"{t['small_task']} task took {t['build_all_over_probe']}x its probe")
    print(results.get("summary"))
    write_results("bench_choose", {k: v for k, v in results.items()
                                   if k not in ("benchmark", "measured", "machine")})


if __name__ == "__main__":
    main()
