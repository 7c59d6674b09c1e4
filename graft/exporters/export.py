"""`graft export`: write every selected format x precision, check each, record each.

Each candidate file is written under a temporary name in ``exports/``, run
through the runtime on every usable image of the bundle (``parity``) and judged
against the Keras model with its precision's budget (``budgets``). Only then does it take its final name,
together with its graft.json row, under the bundle's lock. A failed export
leaves the previous file and row as they were; a file that breaks its budget is
kept but flagged (``status: flagged``), never recorded as good, and never
replaces a previous good one.
"""

from __future__ import annotations

import os
import secrets
from datetime import datetime, timezone
from pathlib import Path

from graft import bundle
from graft.errors import CheckFailed, ExportError
from graft.exporters import budgets as budget_rules
from graft.exporters import parity, registry
from graft.exporters.context import Context
from graft.exporters.install import Candidate, install, sweep
from graft.exporters.options import ExportOptions

STEPS = (1, 2, 4, 8, 16, 32, 64)   # how many of the worst layers auto-exclude keeps in float


def export_bundle(bundle_dir: str | Path, targets: list[registry.Target],
                  options: ExportOptions | None = None, verify_exports: bool = True,
                  budgets: dict | None = None, echo=None, strict: bool = False,
                  agreement_data=(), check_limit: int | None = parity.MAX_IMAGES) -> list[dict]:
    """Export ``targets``, check and record each.

    Args:
        bundle_dir: a bundle made by `graft build`.
        targets: format x precision rows of ``registry.TARGETS`` (see ``registry.select``).
        options: export settings (refused when no target would use them).
        verify_exports: check each file against Keras (agreement on every usable image,
            accuracy on the held-out split).
        budgets: per-family budget overrides, e.g. ``{"int8": {"min_agreement": 0.97}}``.
        echo: called with one line per export.
        strict: judge the measured figures, not their 95% intervals (``budgets``).
        agreement_data: more folders, files or lists of images for agreement (no labels needed).
        check_limit: at most this many images for the checks (a stated, seeded sample past it).

    Returns:
        The graft.json rows of the exported files.

    Raises:
        CheckFailed: some export breaks its budget (it is kept and flagged).
        ExportError: a converter or quantizer failed (nothing of that target is changed).
    """
    bundle_dir = Path(bundle_dir)
    options = (options or ExportOptions()).check_for(targets, verify=verify_exports)
    ctx = Context(bundle_dir, options)
    echo = echo or (lambda line: None)
    rows = []
    try:
        with bundle.locked(bundle_dir):
            sweep(bundle_dir)
        held_out = parity.CheckImages(bundle_dir, options.data_root, agreement_data, check_limit,
                                      options.seed) if verify_exports else None
        if held_out is not None:
            echo(describe_check(held_out))
        ctx.strict = strict
        for target in targets:
            candidate = produce(ctx, target, held_out, budgets)
            try:
                if candidate.row["status"] == "flagged" and target.precision == "int8":
                    candidate = _debug_int8(ctx, target, candidate, held_out, budgets, echo)
                row = install(bundle_dir, candidate, echo, bundle.build_id(ctx.manifest))
            finally:
                candidate.discard()  # installed candidates are gone already; anything else goes now
            echo(summary(row))
            rows.append(row)
    finally:
        ctx.close()
    flagged = [row for row in rows if row["status"] == "flagged"]
    if flagged:
        kept = [row for row in flagged if row.get("kept_previous")]
        raise CheckFailed(f"{len(flagged)} of {len(rows)} exports break their budget: "
                          + "; ".join(f"{row['path']} ({', '.join(_breaches(row))})" for row in flagged)
                          + ("; the previous good file was kept for " + ", ".join(r["path"] for r in kept)
                             if kept else "")
                          + (("; the others are" if kept else "; they are") + " kept and flagged in graft.json"
                             if len(kept) < len(flagged) else ""))
    return rows


def export_onnx(bundle_dir: str | Path, opset: int = 17, data_root: str | None = None) -> dict:
    """Export the float32 ONNX model, check parity with Keras, record it; return its row."""
    rows = export_bundle(bundle_dir, [registry.TARGETS[("onnx", "float32")]],
                         ExportOptions(opset=opset, data_root=data_root))
    return rows[0]


def describe_check(images: parity.CheckImages) -> str:
    """One line: what the checks run on."""
    text = f"checking against Keras on {len(images)} images"
    if images.sampled:
        text += f" (a seeded sample of {images.usable}, seed {images.seed})"
    if images.extra:
        text += f", {images.extra} of them from --agreement-data"
    return text + f"; accuracy on {int(images.held.sum())} {images.split} images"


def produce(ctx: Context, target: registry.Target, held_out: parity.CheckImages | None,
            budgets: dict | None = None) -> Candidate:
    """Write one target's file under a temporary name and judge it (when ``held_out``)."""
    final = ctx.bundle_dir / bundle.EXPORTS_DIR / target.filename
    final.parent.mkdir(parents=True, exist_ok=True)
    name = f".{final.name}.{os.getpid()}-{secrets.token_hex(4)}{final.suffix}"  # see sweep()
    candidate = Candidate(final.parent / name, {})
    try:
        options = target.load()(ctx, candidate.path)
        candidate.row = export_row(ctx.bundle_dir, final, candidate.path, target, options)
        if held_out is None:
            candidate.row["status"] = "unverified"
            return candidate
        result = _check(candidate.path, target, held_out)
        verdict = budget_rules.judge(result, target.budget, budgets, ctx.strict)
        candidate.row["parity"] = {**result, **{k: verdict[k] for k in (
            "budget", "budget_default", "rule", "passed", "breaches", "default_breaches")}}
        candidate.row["status"] = verdict["status"]
        if "flagged" in verdict:
            candidate.row["flagged"] = verdict["flagged"]
        if target.format == "tflite":
            from graft.exporters.mediapipe_check import preprocessing_agreement

            candidate.row["mediapipe"] = preprocessing_agreement(candidate.path, held_out)
    except BaseException:
        candidate.discard()  # never leave an unchecked, unrecorded file behind
        raise
    return candidate


def _check(path: Path, target: registry.Target, held_out: parity.CheckImages) -> dict:
    """Parity at batch 32; dynamic int8 also at batch 1 (its results depend on the batch)."""
    result = parity.check_file(path, held_out)
    if target.precision != "dynamic":
        return result
    single = parity.check_file(path, held_out, batch=1)
    worst = min((result, single), key=lambda r: (r["top1_agreement"], -r["max_abs_diff"]))
    return {**worst, "per_batch": {str(b): {k: r[k] for k in ("top1_agreement", "max_abs_diff", "accuracy")}
                                   for b, r in ((32, result), (1, single))}}


def _debug_int8(ctx: Context, target, candidate: Candidate, held_out, budgets, echo) -> Candidate:
    """Say which layers hurt; with --auto-exclude, keep the worst in float until the budget holds."""
    from graft.exporters import debug

    try:
        ranking = debug.rank_layers(ctx, target.format, candidate.path)
    except Exception as exc:  # the file is still recorded, flagged, without the diagnosis or search
        candidate.row["flagged"] += f"; the layer debugger failed ({type(exc).__name__}: {str(exc)[:200]})"
        return candidate
    if ctx.options.auto_exclude:
        candidate = auto_exclude(ctx, target, candidate, ranking, held_out, budgets, echo)
        info = candidate.row["auto_exclude"]
        echo(f"  auto-exclude kept {len(info['excluded_nodes'])} layer(s) in float: "
             f"size {info['size_cost']:+.1%}, batch-32 throughput {-info['speed_cost']:+.1%}")
        return candidate
    candidate.row["worst_layers"] = ranking[:10]
    candidate.row["flagged"] += (f"; worst layers ({ranking[0]['metric'] if ranking else ''}): "
                                 f"{debug.describe(ranking)}; keep them in float with --exclude-nodes "
                                 "or --auto-exclude")
    return candidate


def auto_exclude(ctx: Context, target, candidate: Candidate, ranking: list[dict], held_out,
                 budgets, echo) -> Candidate:
    """Keep the worst layers of ``ranking`` in float, more each round, until the budget holds
    (or give up)."""
    before = _cost(candidate)
    tried, current = [], candidate
    for count in [n for n in STEPS if n < len(ranking)] + [len(ranking)]:
        names = list(dict.fromkeys(n for r in ranking[:count] for n in r.get("nodes", [r["node"]])))
        ctx.excluded[target.format] = names
        try:
            attempt = produce(ctx, target, held_out, budgets)
        except ExportError as exc:  # e.g. the converter refuses to keep this many in float
            tried.append({"excluded": count, "nodes": len(names), "passed": False, "error": str(exc)})
            echo(f"  auto-exclude: worst {count} layer(s) in float -> {exc}")
            break
        current.discard()
        current = attempt
        result = current.row["parity"]
        tried.append({"excluded": count, "nodes": len(names), "passed": result["passed"],
                      **{k: result[k] for k in ("top1_agreement", "accuracy", "max_abs_diff")}})
        echo(f"  auto-exclude: worst {count} layer(s) in float -> agreement "
             f"{result['top1_agreement']:.2%}, accuracy {result['accuracy']:.2%}, "
             f"max|dprob| {result['max_abs_diff']:.2e}")
        if current.row["status"] == "ok":
            break
    ctx.excluded.pop(target.format, None)
    after = _cost(current)
    current.row["auto_exclude"] = {
        "excluded_nodes": current.row["options"].get("excluded_nodes", []), "tried": tried,
        "worst_layers": ranking[:10], "before": before, "after": after,
        "size_cost": after["size_bytes"] / before["size_bytes"] - 1,
        "speed_cost": 1 - after["throughput_batch32"] / before["throughput_batch32"],
        "passed": current.row["status"] == "ok"}
    return current


def _cost(candidate: Candidate) -> dict:
    result = candidate.row["parity"]
    return {"size_bytes": candidate.row["size_bytes"], "throughput_batch32": throughput(candidate.path),
            "top1_agreement": result["top1_agreement"], "accuracy": result["accuracy"]}


def throughput(path: Path, batch: int = 32) -> float:
    """A quick batch-32 images/s figure on random pixels, for the cost of exclusions."""
    import numpy as np

    from graft.exporters.verify import measure_speed
    from graft.runtime.engines import open_engine

    engine = open_engine(path, device="cpu")
    size = engine.manifest["preprocessing"]["size"] if engine.manifest else [224, 224]
    pixels = np.random.default_rng(0).integers(0, 256, (batch, *size, 3), dtype=np.uint8)
    return measure_speed(engine, pixels, seconds=1.0)["throughput_batch32"]


def _breaches(row: dict) -> list[str]:
    return row.get("parity", {}).get("breaches") or row.get("parity", {}).get("default_breaches") \
        or [row.get("flagged", "flagged")]


def export_row(bundle_dir: Path, final: Path, written: Path, target: registry.Target, options: dict) -> dict:
    """The graft.json row of a file written at ``written`` that will be named ``final``."""
    return {
        "path": final.relative_to(bundle_dir).as_posix(),
        "format": target.format,
        "precision": target.precision,
        "size_bytes": written.stat().st_size,
        "sha256": bundle.sha256_file(written),
        "options": {k: v for k, v in options.items() if k != "calibration"},
        **({"calibration": options["calibration"]} if "calibration" in options else {}),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "tools": tool_versions(target.format),
    }


def tool_versions(fmt: str) -> dict:
    from importlib import metadata

    names = {"onnx": ["onnxruntime", "onnx", "tf2onnx", "tensorflow"],
             "tflite": ["tensorflow", "ai-edge-litert"]}[fmt]
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def summary(row: dict) -> str:
    from graft.stats import accuracy_text, agreement_text

    text = f"{row['path']:<28} {row['size_bytes'] / 1e6:7.2f} MB  {row['status']}"
    result = row.get("parity")
    if result:
        text += (f"  agreement {agreement_text(result)}  max|dprob| {result['max_abs_diff']:.2e}"
                 f"  accuracy {accuracy_text(result)}")
    if row.get("flagged"):
        text += f"  -- {row['flagged']}"
    return text
