"""Parity and verification: run exports next to the Keras model on the bundle's held-out images.

Every check runs the exported file through the runtime engines (what ships is
what is verified). Budgets are per precision family; ``graft verify`` adds
latency and throughput and writes the table into the bundle.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from graft import bundle
from graft.errors import ExportError

# Fractions (0.98 = 98%); max_accuracy_drop is in accuracy fraction (0.01 = 1 point).
BUDGETS = {
    "float32": {"min_agreement": 1.0, "max_abs_diff": 1e-4},
    "float16": {"min_agreement": 0.995},
    "int8": {"min_agreement": 0.98, "max_accuracy_drop": 0.01},
}


def load_split(bundle_dir: str | Path, split: str = "test", data_root: str | Path | None = None,
               limit: int | None = None) -> tuple[np.ndarray, np.ndarray, str]:
    """uint8 pixels (N, H, W, 3) and label indices for a split, through the runtime's preprocessing.

    Falls back to the validation split, then the training split, when a split is
    empty (tiny datasets). Returns the split actually used.
    """
    manifest = bundle.read_manifest(bundle_dir)
    rows = read_splits(bundle_dir)
    order = [split] + [s for s in ("test", "val", "train") if s != split]
    for name in order:
        chosen = [r for r in rows["samples"] if r["split"] == name]
        if chosen:
            break
    else:
        raise ExportError(f"{bundle_dir}: splits.json lists no images")
    if limit:
        chosen = chosen[:limit]
    y = np.array([manifest["labels"].index(row["label"]) for row in chosen])
    return load_rows(chosen, manifest, data_root, f"{name} image"), y, name


def load_rows(rows: list[dict], manifest: dict, data_root: str | Path | None, what: str) -> np.ndarray:
    """uint8 pixels (N, H, W, 3) of splits.json rows, through the runtime's preprocessing."""
    from graft.runtime.preprocess import load_pixels

    pixels = []
    for row in rows:
        path = Path(data_root, row["path"]) if data_root else Path(row["file"])
        if not path.is_file():
            raise ExportError(f"{path}: {what} of the bundle is missing; if the dataset moved, "
                              "pass --data DATA (its new root)")
        pixels.append(load_pixels(path, manifest["preprocessing"]))
    return np.stack(pixels)


def read_splits(bundle_dir) -> dict:
    path = Path(bundle_dir, "splits.json")
    if not path.is_file():
        raise ExportError(f"{bundle_dir}: no splits.json; rebuild the bundle with `graft build`")
    return json.loads(path.read_text())


def keras_probs(bundle_dir: str | Path, pixels: np.ndarray, batch_size: int = 64, model=None) -> np.ndarray:
    model = model or load_keras(bundle_dir)
    return np.asarray(model.predict(pixels.astype(np.float32), batch_size=batch_size, verbose=0),
                      dtype=np.float32)


def load_keras(bundle_dir: str | Path):
    import keras

    path = Path(bundle_dir, bundle.KERAS_NAME)
    if not path.is_file():
        raise ExportError(f"{bundle_dir}: no {bundle.KERAS_NAME}; build the bundle first")
    return keras.saving.load_model(path, safe_mode=True, compile=False)


def compare(reference: np.ndarray, candidate: np.ndarray) -> dict:
    """Top-1 agreement and max |difference| between two probability arrays."""
    if reference.shape != candidate.shape:
        raise ExportError(f"output shapes differ: reference {reference.shape}, export {candidate.shape}")
    agreement = float((reference.argmax(1) == candidate.argmax(1)).mean()) if len(reference) else 1.0
    max_diff = float(np.abs(reference - candidate).max()) if len(reference) else 0.0
    return {"images": int(len(reference)), "top1_agreement": agreement, "max_abs_diff": max_diff}


def budget_for(family: str, overrides: dict | None = None) -> dict:
    """The budget of a precision family ('float32', 'float16', 'int8') with overrides applied."""
    budget = dict(BUDGETS[family])
    budget.update((overrides or {}).get(family, {}))
    return budget


def breaches(result: dict, budget: dict) -> list[str]:
    """What a result breaks in a budget, as short phrases (empty: within budget)."""
    found = []
    if result["top1_agreement"] < budget.get("min_agreement", 0.0):
        found.append(f"agreement {result['top1_agreement']:.2%} < {budget['min_agreement']:.2%}")
    if not result["max_abs_diff"] <= budget.get("max_abs_diff", float("inf")):  # NaN breaks it too
        found.append(f"max |dprob| {result['max_abs_diff']:.2e} > {budget['max_abs_diff']:.0e}")
    drop = result.get("accuracy_drop")
    if drop is not None and not drop <= budget.get("max_accuracy_drop", float("inf")):
        found.append(f"accuracy drop {drop * 100:.2f} pt > {budget['max_accuracy_drop'] * 100:.2f} pt")
    return found


def accuracy(probs: np.ndarray, y: np.ndarray) -> float:
    return float((probs.argmax(1) == y).mean()) if len(y) else 0.0


def check_file(path: Path, pixels: np.ndarray, y: np.ndarray, reference: np.ndarray, split: str,
               budget: dict, threads: int | None = None) -> dict:
    """Run an exported file through the runtime on held-out images and judge it against Keras."""
    from graft.runtime.engines import open_engine

    engine = open_engine(path, device="cpu", threads=threads)
    candidate = run_batched(engine, pixels)
    result = compare(reference, candidate)
    keras_accuracy = accuracy(reference, y)
    result.update(accuracy=accuracy(candidate, y), keras_accuracy=keras_accuracy,
                  accuracy_drop=keras_accuracy - accuracy(candidate, y))
    found = breaches(result, budget)
    return {"reference": "keras", "split": split, **result, "budget": dict(budget),
            "passed": not found, "breaches": found}


def run_batched(engine, pixels: np.ndarray, batch: int = 32) -> np.ndarray:
    from graft.runtime.engines import run_batched as chunks

    return np.concatenate(chunks(engine, pixels, batch))


# ------------------------------------------------------------------------ graft verify
REPORT_JSON = "verify.json"
REPORT_MD = "verify.md"
COLUMNS = ("format", "precision", "size (MB)", "top-1 acc", "Δ acc vs Keras", "agreement",
           "max |Δprob|", "p50 batch-1 (ms)", "batch-32 (img/s)", "status")


def measure_speed(engine, pixels: np.ndarray, seconds: float = 1.5, batch: int = 32) -> dict:
    """Median batch-1 latency and batch-32 throughput of an engine (after warm-up runs)."""
    import time

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

    latency = timed(lambda: engine.run(one), 200)
    whole = timed(lambda: run_batched(engine, many, fixed or batch), 50)
    return {"p50_ms_batch1": latency * 1e3, "throughput_batch32": batch / whole}


def verify_bundle(bundle_dir: str | Path, budgets: dict | None = None, data_root: str | None = None,
                  threads: int | None = None, speed: bool = True) -> dict:
    """Run every export of a bundle on its test split; write verify.json/.md; return the report.

    Also stores each file's verification (and status) in its graft.json row. The
    caller decides what a breach means (the CLI exits 1).
    """
    import os

    from graft.exporters.registry import TARGETS, target_of

    bundle_dir = Path(bundle_dir)
    manifest = bundle.read_manifest(bundle_dir)
    exports = manifest.get("exports", [])
    if not exports:
        raise ExportError(f"{bundle_dir}: nothing to verify (no exports); run `graft export {bundle_dir}`")
    threads = threads or os.cpu_count()
    pixels, y, split = load_split(bundle_dir, "test", data_root)
    reference = keras_probs(bundle_dir, pixels)
    order = {key: i for i, key in enumerate(TARGETS)}
    exports = sorted(exports, key=lambda r: order.get((r.get("format"), r.get("precision")), len(order)))
    rows = [verify_row(bundle_dir, row, target_of(row).budget, pixels, y, reference, split,
                       budget_for(target_of(row).budget, budgets), threads, speed) for row in exports]
    report = {"bundle": manifest.get("name", bundle_dir.name), "split": split, "images": int(len(y)),
              "keras_accuracy": accuracy(reference, y), "threads": threads, "rows": rows,
              "passed": all(r["passed"] for r in rows)}
    bundle.atomic_write_bytes(bundle_dir / REPORT_JSON, (json.dumps(report, indent=2) + "\n").encode())
    bundle.atomic_write_bytes(bundle_dir / REPORT_MD, markdown(report).encode())
    _record(bundle_dir, rows)
    return report


def verify_row(bundle_dir: Path, row: dict, family: str, pixels, y, reference, split: str,
               budget: dict, threads: int, speed: bool) -> dict:
    from graft.runtime.engines import open_engine

    path = bundle_dir / row["path"]
    base = {"path": row["path"], "format": row["format"], "precision": row["precision"],
            "budget_family": family, "size_bytes": path.stat().st_size if path.is_file() else 0}
    if not path.is_file():
        return {**base, "passed": False, "breaches": ["file missing"], "budget": budget}
    if bundle.sha256_file(path) != row.get("sha256"):
        return {**base, "passed": False, "budget": budget,
                "breaches": ["sha256 differs from graft.json (file changed or damaged)"]}
    result = check_file(path, pixels, y, reference, split, budget, threads)
    out = {**base, **{k: result[k] for k in ("accuracy", "keras_accuracy", "accuracy_drop",
                                             "top1_agreement", "max_abs_diff", "images",
                                             "passed", "breaches", "budget")}}
    if speed:
        out.update(measure_speed(open_engine(path, device="cpu", threads=threads), pixels), threads=threads)
    return out


def _record(bundle_dir: Path, rows: list[dict]) -> None:
    manifest = bundle.read_manifest(bundle_dir)
    by_path = {r["path"]: r for r in rows}
    for row in manifest.get("exports", []):
        found = by_path.get(row["path"])
        if found is None or "accuracy" not in found:
            continue
        row["verification"] = {k: found[k] for k in ("accuracy", "accuracy_drop", "top1_agreement",
                                                     "max_abs_diff", "images", "passed", "breaches")}
        if "p50_ms_batch1" in found:
            row["speed"] = {k: found[k] for k in ("p50_ms_batch1", "throughput_batch32", "threads")}
        row["status"] = "ok" if found["passed"] else "flagged"
        if found["passed"]:
            row.pop("flagged", None)
        else:
            row["flagged"] = "breaks its budget: " + ", ".join(found["breaches"])
    bundle.write_manifest(bundle_dir, manifest)


def table_cells(row: dict) -> list[str]:
    if "accuracy" not in row:
        return [row["format"], row["precision"], f"{row['size_bytes'] / 1e6:.3f}", "-", "-", "-",
                "-", "-", "-", "FAIL: " + "; ".join(row["breaches"])]
    speed = ("p50_ms_batch1" in row)
    return [row["format"], row["precision"], f"{row['size_bytes'] / 1e6:.3f}",
            f"{row['accuracy']:.2%}", f"{(-row['accuracy_drop'] * 100) + 0.0:+.2f} pt",
            f"{row['top1_agreement']:.2%}", f"{row['max_abs_diff']:.1e}",
            f"{row['p50_ms_batch1']:.2f}" if speed else "-",
            f"{row['throughput_batch32']:.0f}" if speed else "-",
            "ok" if row["passed"] else "FAIL: " + "; ".join(row["breaches"])]


def markdown(report: dict) -> str:
    lines = [f"Verified on {report['images']} {report['split']} images; Keras top-1 accuracy "
             f"{report['keras_accuracy']:.2%}; {report['threads']} threads.", "",
             "| " + " | ".join(c.replace("|", "\\|") for c in COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in table_cells(row)) + " |"
              for row in report["rows"]]
    return "\n".join(lines) + "\n"
