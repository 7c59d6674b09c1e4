"""`graft verify`: every export of a bundle against Keras, in one table.

Agreement is measured on every usable image of the bundle (plus any
``--agreement-data``), accuracy on the held-out split, each with n and a 95%
interval; ``budgets`` judges them. Adds batch-1 latency and batch-32
throughput to the parity check, writes the
table into the bundle (verify.json, verify.md) and stores each file's result in
its graft.json row. A row's ``status`` is judged against the default budget
and the one given: a looser budget on the command line never turns a flagged
file into a good one, it is recorded beside the status.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from graft import bundle
from graft.errors import ExportError
from graft.exporters import budgets as budget_rules
from graft.exporters import parity
from graft.exporters.registry import TARGETS, target_of

REPORT_JSON = "verify.json"
REPORT_MD = "verify.md"
COLUMNS = ("format", "precision", "size (MB)", "agreement (n, 95% CI)", "max |Δprob|",
           "held-out accuracy (n, 95% CI)", "Δ acc vs Keras (95% CI)", "p50 batch-1 (ms)",
           "batch-32 (img/s)", "status")
KEPT = ("accuracy", "accuracy_interval", "keras_accuracy", "keras_accuracy_interval", "accuracy_drop",
        "drop_interval", "accuracy_judged", "top1_agreement", "agreement_interval", "max_abs_diff",
        "images", "usable", "extra", "sampled", "seed", "split", "test_images")


def measure_speed(engine, pixels: np.ndarray, seconds: float = 1.5, batch: int = 32) -> dict:
    """Median batch-1 latency and batch-32 throughput of an engine (after warm-up runs)."""
    from graft.runtime.engines import run_batched

    one = pixels[:1]
    many = np.resize(pixels, (batch, *pixels.shape[1:])).astype(pixels.dtype)
    fixed = engine.input_shape[0] if engine.input_shape else None

    def timed(fn, limit):
        for _ in range(2):
            fn()
        times, start = [], time.perf_counter()
        while len(times) < 5 or (time.perf_counter() - start < seconds and len(times) < limit):
            begin = time.perf_counter()
            fn()
            times.append(time.perf_counter() - begin)
        return float(np.median(times))

    latency = timed(lambda: run_batched(engine, one, 1), 200)
    whole = timed(lambda: run_batched(engine, many, fixed or batch), 50)
    return {"p50_ms_batch1": latency * 1e3, "throughput_batch32": batch / whole}


def verify_bundle(bundle_dir: str | Path, budgets: dict | None = None, data_root: str | None = None,
                  model_threads: int | None = None, speed: bool = True, strict: bool = False,
                  agreement_data=(), check_limit: int | None = parity.MAX_IMAGES) -> dict:
    """Run every export of a bundle against Keras and record the results.

    Args:
        bundle_dir: the bundle.
        budgets: per-family overrides, e.g. ``{"int8": {"min_agreement": 0.97}}``.
        data_root: the dataset's new root if it moved since the build.
        model_threads: engine threads (default: all CPU cores).
        speed: also measure latency and throughput.
        strict: judge the measured figures, not their 95% intervals.
        agreement_data: more folders, files or lists of images for agreement (no labels needed).
        check_limit: at most this many images (a stated, seeded sample past it).

    Returns:
        The report: bundle, check (what it ran on), keras_accuracy, threads, rows, passed.
        Also written to verify.json / verify.md and into each graft.json row.
    """
    bundle_dir = Path(bundle_dir)
    manifest = bundle.read_manifest(bundle_dir)
    exports = manifest.get("exports", [])
    if not exports:
        raise ExportError(f"{bundle_dir}: nothing to verify (no exports); run `graft export {bundle_dir}`")
    threads = model_threads or os.cpu_count()
    images = parity.CheckImages(bundle_dir, data_root, agreement_data, check_limit)
    reference = images.reference()
    order = {key: i for i, key in enumerate(TARGETS)}
    exports = sorted(exports, key=lambda r: order.get((r.get("format"), r.get("precision")), len(order)))
    sample = images.sample(32) if speed else None
    rows = [verify_row(bundle_dir, row, images, budgets, threads, sample, strict) for row in exports]
    keras = parity.measure(reference, reference, images)
    report = {"bundle": manifest.get("name", bundle_dir.name), "check": images.describe(),
              "rule": "strict" if strict else "interval",
              "keras_accuracy": keras["keras_accuracy"], "keras_accuracy_interval": keras["keras_accuracy_interval"],
              "threads": threads, "rows": rows, "passed": all(r["passed"] for r in rows)}
    bundle.atomic_write_bytes(bundle_dir / REPORT_JSON, (json.dumps(report, indent=2) + "\n").encode())
    bundle.atomic_write_bytes(bundle_dir / REPORT_MD, markdown(report).encode())
    _record(bundle_dir, rows, bundle.build_id(manifest))
    return report


def verify_row(bundle_dir: Path, row: dict, images, budgets, threads: int, sample, strict: bool = False) -> dict:
    """One export's verification row (a missing or changed file fails without running)."""
    from graft.runtime.engines import open_engine

    family = target_of(row).budget
    path = bundle_dir / row["path"]
    base = {"path": row["path"], "format": row["format"], "precision": row["precision"],
            "budget_family": family, "size_bytes": path.stat().st_size if path.is_file() else 0,
            "budget": budget_rules.budget_for(family, budgets)}
    if not path.is_file():
        return {**base, "passed": False, "breaches": ["file missing"], "sha256": row.get("sha256")}
    if bundle.sha256_file(path) != row.get("sha256"):
        return {**base, "passed": False, "breaches": ["sha256 differs from graft.json (file changed or damaged)"],
                "sha256": row.get("sha256")}
    base["sha256"] = row["sha256"]
    result = parity.check_file(path, images, threads)
    out = {**base, **{k: result[k] for k in KEPT}, **budget_rules.judge(result, family, budgets, strict)}
    if sample is not None:
        out.update(measure_speed(open_engine(path, device="cpu", threads=threads), sample), threads=threads)
    return out


def _record(bundle_dir: Path, rows: list[dict], built: tuple | None = None) -> None:
    """Store each result in its graft.json row, if the row still describes the file that was checked
    (a concurrent `graft export` may have replaced it, or a rebuild the whole bundle, meanwhile)."""
    by_path = {r["path"]: r for r in rows}
    with bundle.updating(bundle_dir) as manifest:
        if built is not None and bundle.build_id(manifest) != built:
            return
        for row in manifest.get("exports", []):
            found = by_path.get(row["path"])
            if found is None or found.get("sha256") != row.get("sha256"):
                continue
            if "accuracy" not in found:  # missing or changed: the file cannot be trusted
                row["status"] = "flagged"
                row["flagged"] = "; ".join(found["breaches"])
                continue
            row["verification"] = {k: found[k] for k in KEPT + ("passed", "breaches", "rule", "budget",
                                                                   "budget_default", "default_breaches")}
            if "p50_ms_batch1" in found:
                row["speed"] = {k: found[k] for k in ("p50_ms_batch1", "throughput_batch32", "threads")}
            row["status"] = found["status"]
            row.pop("flagged", None)
            if "flagged" in found:
                row["flagged"] = found["flagged"]


def table_cells(row: dict) -> list[str]:
    if "accuracy" not in row:
        return [row["format"], row["precision"], f"{row['size_bytes'] / 1e6:.3f}", "-", "-", "-", "-",
                "-", "-", "FAIL: " + "; ".join(row["breaches"])]
    speed = "p50_ms_batch1" in row
    status = "ok" if row["passed"] else "FAIL: " + "; ".join(row["breaches"])
    if row["passed"] and row.get("default_breaches"):
        status = "ok under the given budget; FLAGGED by default: " + "; ".join(row["default_breaches"])
    low, high = row["agreement_interval"]
    agreement = f"{row['top1_agreement']:.2%} (n={row['images']}, {low:.1%}–{high:.1%})"
    if row["accuracy_judged"]:
        low, high = row["accuracy_interval"]
        accuracy = f"{row['accuracy']:.2%} (n={row['test_images']}, {low:.1%}–{high:.1%})"
        d_low, d_high = row["drop_interval"]
        drop = f"{-row['accuracy_drop'] * 100 + 0.0:+.2f} pt ({-d_high * 100:+.2f} to {-d_low * 100:+.2f})"
    else:
        accuracy = f"too few to judge (n={row['test_images']})"
        drop = "-"
    return [row["format"], row["precision"], f"{row['size_bytes'] / 1e6:.3f}", agreement,
            f"{row['max_abs_diff']:.1e}", accuracy, drop,
            f"{row['p50_ms_batch1']:.2f}" if speed else "-",
            f"{row['throughput_batch32']:.0f}" if speed else "-", status]


def headline(report: dict) -> str:
    """One sentence: what the check ran on and how it judged."""
    from graft.stats import SMALL_N

    check = report["check"]
    text = f"Agreement with Keras on {check['images']} images"
    if check["sampled"]:
        text += f" (a seeded sample of {check['usable']}, seed {check['seed']})"
    text += f"; accuracy on {check['test_images']} {check['split']} images"
    if check["test_images"] < SMALL_N:
        text += f" (too few to judge accuracy: at least {SMALL_N} needed)"
    else:
        text += f", Keras {report['keras_accuracy']:.2%}"
    rule = ("the measured figures (--strict)" if report["rule"] == "strict"
            else "the 95% interval: a budget breaks when the whole interval is past it")
    return text + f"; judged by {rule}; {report['threads']} threads."


def markdown(report: dict) -> str:
    lines = [headline(report), "",
             "| " + " | ".join(c.replace("|", "\\|") for c in COLUMNS) + " |",
             "|" + "|".join("---" for _ in COLUMNS) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in table_cells(row)) + " |"
              for row in report["rows"]]
    return "\n".join(lines) + "\n"
