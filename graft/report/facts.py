"""What the report shows, read from a bundle: training stages, export rows, misclassified images.

Everything here tolerates older bundles (training history directly under
``training``; test rows in ``splits.json`` without ``predicted``/``score``) and
hand-edited manifests (a missing or mistyped field becomes "not recorded").
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

from graft import bundle
from graft.errors import BundleError, GraftError

PRECISION_ORDER = ("float32", "float16", "dynamic", "int8")
HISTORY_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy")
STAGE_TITLES = {"head": "Head (frozen backbone)", "fine_tune": "Fine-tuning"}


def number(value) -> float | None:
    """``value`` as a finite float, or None (missing, mistyped, NaN)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def training_stages(manifest: dict) -> list[dict]:
    """The training stages, each {name, title, history {key: [floats]}, epochs_run, best_epoch, ...}.

    Reads the current shape (``training.stages``) and the older one (history keys
    directly under ``training``, a single head stage).
    """
    training = manifest.get("training")
    if not isinstance(training, dict):
        return []
    raw = training.get("stages")
    if not isinstance(raw, list):
        raw = [{"name": "head", "history": training, **{k: training.get(k) for k in
                                                         ("epochs_run", "best_epoch", "monitor")}}]
    stages = []
    for i, stage in enumerate(s for s in raw if isinstance(s, dict)):
        history = stage.get("history") if isinstance(stage.get("history"), dict) else {}
        curves = {key: [number(v) for v in history[key]] for key in HISTORY_KEYS
                  if isinstance(history.get(key), list) and history[key]}
        name = str(stage.get("name") or f"stage {i + 1}")
        stages.append({**stage, "name": name, "title": STAGE_TITLES.get(name, name), "history": curves})
    return [s for s in stages if s["history"]]


def export_rows(manifest: dict) -> list[dict]:
    """One flat row per exported file, its check taken from ``verification`` before ``parity``."""
    rows = []
    for row in manifest.get("exports") or []:
        if isinstance(row, dict):
            rows.append(_export_row(row))
    order = {p: i for i, p in enumerate(PRECISION_ORDER)}
    return sorted(rows, key=lambda r: (r["format"], order.get(r["precision"], len(order)), r["path"]))


def _export_row(row: dict) -> dict:
    parity = row.get("parity") if isinstance(row.get("parity"), dict) else {}
    verification = row.get("verification") if isinstance(row.get("verification"), dict) else {}
    check = verification or parity
    speed = row.get("speed") if isinstance(row.get("speed"), dict) else {}
    accuracy, drop = number(check.get("accuracy")), number(check.get("accuracy_drop"))
    keras = number(check.get("keras_accuracy"))
    if keras is None:
        keras = number(parity.get("keras_accuracy"))
    if keras is None and accuracy is not None and drop is not None:
        keras = accuracy + drop
    if drop is None and accuracy is not None and keras is not None:
        drop = keras - accuracy
    status = row.get("status") if isinstance(row.get("status"), str) else None
    if status is None:
        status = "unverified" if not check else ("ok" if check.get("passed") else "flagged")
    budget = check.get("budget") or parity.get("budget")
    return {
        "path": str(row.get("path", "")),
        "format": str(row.get("format", "?")),
        "precision": str(row.get("precision", "?")),
        "size_bytes": number(row.get("size_bytes")),
        "accuracy": accuracy, "keras_accuracy": keras, "accuracy_drop": drop,
        "agreement": number(check.get("top1_agreement")),
        "max_abs_diff": number(check.get("max_abs_diff")),
        "images": number(check.get("images")),
        "agreement_interval": _pair(check.get("agreement_interval")),
        "test_images": number(check.get("test_images")),
        "accuracy_interval": _pair(check.get("accuracy_interval")),
        "drop_interval": _pair(check.get("drop_interval")),
        "p50_ms": number(speed.get("p50_ms_batch1")),
        "throughput": number(speed.get("throughput_batch32")),
        "threads": number(speed.get("threads")),
        "status": status,
        "flagged": str(row.get("flagged") or ""),
        "breaches": [str(b) for b in check.get("breaches") or [] if b],
        "budget": budget if isinstance(budget, dict) else None,
        "checked_by": "graft verify" if verification else ("export" if parity else None),
    }


def _pair(value) -> tuple[float, float] | None:
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(number(v) is not None for v in value):
        return float(value[0]), float(value[1])
    return None


def agreement_cell(r: dict) -> str:
    """'99.23% (n=130, 95.8–99.9%)', or the bare figure of a row recorded without its interval."""
    if r["agreement"] is None or r["agreement_interval"] is None:
        return pct(r["agreement"])
    low, high = r["agreement_interval"]
    return f"{pct(r['agreement'])} (n={int(r['images'] or 0)}, {pct(low, 1)}–{pct(high, 1)})"


def accuracy_cell(r: dict) -> str:
    """Held-out accuracy with n and interval, or words when too few images to judge it."""
    from graft.stats import SMALL_N

    if r["accuracy"] is None or r["accuracy_interval"] is None or r["test_images"] is None:
        return pct(r["accuracy"])
    n = int(r["test_images"])
    if n < SMALL_N:
        return f"not judged (n={n}, too few)"
    low, high = r["accuracy_interval"]
    return f"{pct(r['accuracy'])} (n={n}, {pct(low, 1)}–{pct(high, 1)})"


def drop_cell(r: dict) -> str:
    """The change in accuracy from Keras with its paired interval (blank when not judged)."""
    from graft.stats import SMALL_N

    if r["drop_interval"] is None or r["test_images"] is None:
        return points(r["accuracy_drop"])
    if int(r["test_images"]) < SMALL_N:
        return "–"
    low, high = r["drop_interval"]
    return f"{points(r['accuracy_drop'])} ({-high * 100 + 0.0:+.2f} to {-low * 100 + 0.0:+.2f})"


def read_splits(bundle_dir: Path) -> dict | None:
    """splits.json as a dict, or None when it is missing or unreadable (the report still renders)."""
    try:
        return bundle.read_splits(bundle_dir)
    except (BundleError, OSError):
        return None


def misclassified(bundle_dir: Path, manifest: dict) -> dict:
    """The held-out images the model got wrong.

    Returns {"rows": [{path, file, label, predicted, score}], "evaluated": n,
    "source": where the predictions came from, "note": why there are none, or ""}.
    Predictions come from ``splits.json`` (recorded by the build) or, for bundles
    built before that, from the float32 ONNX export run on the test files.
    """
    splits = read_splits(bundle_dir)
    if splits is None:
        return _none("the bundle has no readable splits.json; rebuild it with `graft build`")
    split = (manifest.get("metrics") or {}).get("split") or "test"
    held = [r for r in splits["samples"] if isinstance(r, dict) and r.get("split") == split]
    if not held:
        return _none(f"the bundle's {split} split is empty")
    recorded = [r for r in held if "predicted" in r]
    if recorded:
        source, note = "splits.json (recorded by `graft build`)", ""
    else:
        recorded, source, note = _predict_with_onnx(bundle_dir, held, manifest)
        if not recorded:
            return _none(note)
    wrong = [{"path": str(r.get("path", "")), "file": str(r.get("file", "")), "label": str(r.get("label")),
              "predicted": str(r.get("predicted")), "score": number(r.get("score"))}
             for r in recorded if r.get("predicted") != r.get("label")]
    return {"rows": wrong, "evaluated": len(recorded), "source": source, "note": note}


def _none(note: str) -> dict:
    return {"rows": [], "evaluated": 0, "source": "", "note": note}


def _predict_with_onnx(bundle_dir: Path, held: list[dict], manifest: dict) -> tuple[list[dict], str, str]:
    """Test rows with ``predicted``/``score`` from the float32 ONNX export (older bundles)."""
    rebuild = ("this bundle records no test-set predictions; rebuild it with `graft build` "
               "(or export a float32 ONNX file) to list the misclassified images")
    row = bundle.find_export(manifest, "onnx", "float32")
    if row is None:
        return [], "", rebuild
    from graft.runtime import Classifier

    present = [r for r in held if Path(str(r.get("file", ""))).is_file()]
    if not present:
        return [], "", f"{rebuild}; the test images are not at their recorded paths either"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a flagged export is reported in the exports table
            classifier = Classifier.load(bundle_dir, device="cpu", artifact="onnx:float32")
            predictions = classifier.predict([r["file"] for r in present], top_k=1)
    except GraftError as exc:
        return [], "", f"{rebuild} ({str(exc).splitlines()[0][:200]})"
    rows = [{**r, "predicted": p[0].label, "score": p[0].score} for r, p in zip(present, predictions)]
    missing = len(held) - len(present)
    note = f"{missing} test image(s) are not at their recorded paths and were not evaluated" if missing else ""
    return rows, f"{row.get('path')} (run now: the bundle predates recorded predictions)", note


def wilson_interval(successes: int, total: int) -> tuple[float, float] | None:
    """The 95% Wilson score interval of a proportion (``graft.stats.wilson``); None when total is 0."""
    from graft.stats import wilson

    return wilson(successes, total) if total > 0 else None


def split_totals(manifest: dict) -> dict[str, dict[str, int]]:
    """{label: {train, val, test}} from the manifest (zeros where not recorded)."""
    counts = (manifest.get("dataset") or {}).get("class_counts") or {}
    totals = {}
    for label in manifest.get("labels", []):
        row = counts.get(label) if isinstance(counts.get(label), dict) else {}
        totals[label] = {s: int(number(row.get(s)) or 0) for s in ("train", "val", "test")}
    return totals


def pct(value: float | None, digits: int = 2) -> str:
    """0.9333 -> '93.33%'; None -> '–'."""
    return "–" if value is None else f"{value * 100:.{digits}f}%"


def points(drop: float | None) -> str:
    """An accuracy drop (fraction) as the signed change in points: 0.011 -> '-1.10 pt'."""
    return "–" if drop is None else f"{-drop * 100 + 0.0:+.2f} pt"


def megabytes(size: float | None) -> str:
    """A file size in MB (kB below one MB)."""
    if size is None:
        return "–"
    return f"{size / 1e6:.2f} MB" if size >= 1e6 else f"{size / 1e3:.1f} kB"
