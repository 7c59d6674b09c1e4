"""`graft export`: write every selected format x precision, check each, record each.

Each file is written atomically under ``exports/``, run through the runtime on
the bundle's held-out images and judged against the Keras model with its
precision's budget (unless ``verify=False``). A file that breaks its budget is
kept but flagged in graft.json (``status: flagged``), never recorded as good.
"""

from __future__ import annotations

import copy
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from graft import bundle
from graft.errors import CheckFailed, ExportError
from graft.exporters import registry, verify
from graft.exporters.quantize import ExportOptions, calibration_set


class Context:
    """What the per-format exporters share within one run; each piece is made once, lazily."""

    def __init__(self, bundle_dir: str | Path, options: ExportOptions):
        self.bundle_dir = Path(bundle_dir)
        self.manifest = bundle.read_manifest(self.bundle_dir)
        self.options = options.check()
        self.size = int(self.manifest["preprocessing"]["size"][0])
        self.work = Path(tempfile.mkdtemp(prefix="graft-export-"))
        self.excluded: dict[str, list[str]] = {}   # set by the auto-exclude search
        self._cache: dict = {}

    def close(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)

    def _once(self, key, make):
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def keras_model(self):
        return self._once("keras", lambda: verify.load_keras(self.bundle_dir))

    def calibration(self):
        options = self.options
        return self._once("calibration", lambda: calibration_set(
            self.bundle_dir, options.calibration_size, options.seed, options.data_root))

    def onnx_proto(self):
        """A fresh copy of the float32 ONNX conversion (converted once)."""
        from graft.exporters.onnx import convert

        proto = self._once("onnx_proto", lambda: convert(self.keras_model(), self.size, self.options.opset))
        return copy.deepcopy(proto)

    def onnx_file(self) -> str:
        def make():
            path = self.work / "float32.onnx"
            path.write_bytes(self.onnx_proto().SerializeToString())
            return str(path)
        return self._once("onnx_file", make)

    def onnx_preprocessed(self) -> str:
        from graft.exporters.onnx import preprocess_for_quantization

        def make():
            path = self.work / "float32.pre.onnx"
            preprocess_for_quantization(Path(self.onnx_file()), path)
            return str(path)
        return self._once("onnx_pre", make)

    def onnx_input_name(self) -> str:
        return self.onnx_proto().graph.input[0].name

    def exclude_nodes(self, fmt: str) -> list[str]:
        """Nodes to keep in float for ``fmt``: from --exclude-nodes ('onnx:NAME', 'tflite:NAME'
        or a bare NAME for both) plus those chosen by the auto-exclude search."""
        names = []
        for item in self.options.exclude_nodes:
            prefix, sep, name = item.partition(":")
            if sep and prefix in registry.FORMATS:
                if prefix == fmt:
                    names.append(name)
            else:
                names.append(item)
        if fmt == "onnx" and names:
            from graft.exporters.onnx import node_names

            known = set(node_names(Path(self.onnx_preprocessed())))
            unknown = [n for n in names if n not in known]
            if unknown:
                shown = ", ".join(sorted(known)[:6])
                raise ExportError(f"--exclude-nodes: no ONNX node named {unknown[0]!r} in the "
                                  f"pre-processed model; names look like: {shown}, ...")
        return list(dict.fromkeys(names + self.excluded.get(fmt, [])))


def export_bundle(bundle_dir: str | Path, targets: list[registry.Target],
                  options: ExportOptions | None = None, verify_exports: bool = True,
                  budgets: dict | None = None, echo=None) -> list[dict]:
    """Export ``targets``, check and record each; raise CheckFailed if any is flagged."""
    bundle_dir = Path(bundle_dir)
    ctx = Context(bundle_dir, options or ExportOptions())
    echo = echo or (lambda line: None)
    rows = []
    try:
        held_out = _held_out(ctx) if verify_exports else None
        for target in targets:
            # The old file and its row go first: a row must never vouch for bytes it did not
            # check, and an interrupted run must leave no stale pairing behind.
            _forget(bundle_dir, bundle_dir / bundle.EXPORTS_DIR / target.filename)
            row = export_one(ctx, target, held_out, budgets)
            if row["status"] == "flagged" and target.precision == "int8":
                row = _debug_int8(ctx, target, row, held_out, budgets, echo)
            bundle.record_export(bundle_dir, row)
            echo(summary(row))
            rows.append(row)
    finally:
        ctx.close()
    flagged = [row for row in rows if row["status"] == "flagged"]
    if flagged:
        raise CheckFailed(f"{len(flagged)} of {len(rows)} exports break their budget: "
                          + "; ".join(f"{row['path']} ({', '.join(_breaches(row))})" for row in flagged)
                          + "; they are kept and flagged in graft.json")
    return rows


def _debug_int8(ctx: Context, target, row: dict, held_out: dict, budgets, echo) -> dict:
    """Say which layers hurt; with --auto-exclude, keep the worst in float until the budget holds."""
    from graft.exporters import debug

    if ctx.options.auto_exclude:
        row = debug.auto_exclude(ctx, target, row, held_out, budgets, echo)
        info = row["auto_exclude"]
        echo(f"  auto-exclude kept {len(info['excluded_nodes'])} layer(s) in float: "
             f"size {info['size_cost']:+.1%}, batch-32 throughput {-info['speed_cost']:+.1%}")
        return row
    try:
        ranking = debug.rank_layers(ctx, target.format, ctx.bundle_dir / row["path"])
    except Exception as exc:  # the file is still recorded, flagged, without the diagnosis
        row["flagged"] += f"; the layer debugger failed ({type(exc).__name__}: {str(exc)[:200]})"
        return row
    row["worst_layers"] = ranking[:10]
    row["flagged"] += (f"; worst layers ({ranking[0]['metric'] if ranking else ''}): "
                       f"{debug.describe(ranking)}; keep them in float with --exclude-nodes "
                       "or --auto-exclude")
    return row


def _forget(bundle_dir: Path, path: Path) -> None:
    """Remove a file and its graft.json row (if an older export left one)."""
    path.unlink(missing_ok=True)
    manifest = bundle.read_manifest(bundle_dir)
    relative = path.relative_to(bundle_dir).as_posix()
    kept = [row for row in manifest.get("exports", []) if row.get("path") != relative]
    if len(kept) != len(manifest.get("exports", [])):
        manifest["exports"] = kept
        bundle.write_manifest(bundle_dir, manifest)


def _breaches(row: dict) -> list[str]:
    return row.get("parity", {}).get("breaches") or [row.get("flagged", "flagged")]


def _held_out(ctx: Context) -> dict:
    pixels, y, split = verify.load_split(ctx.bundle_dir, "test", ctx.options.data_root)
    return {"pixels": pixels, "y": y, "split": split,
            "reference": verify.keras_probs(ctx.bundle_dir, pixels, model=ctx.keras_model())}


def export_one(ctx: Context, target: registry.Target, held_out: dict | None,
               budgets: dict | None = None) -> dict:
    """Write one target's file, check it against Keras (if held_out), return its graft.json row."""
    path = ctx.bundle_dir / bundle.EXPORTS_DIR / target.filename
    with bundle.atomic_path(path, suffix=path.suffix) as tmp:
        options = target.load()(ctx, tmp)
    try:
        row = export_row(ctx.bundle_dir, path, target, options)
        if held_out is None:
            row.update(status="unverified")
            return row
        budget = verify.budget_for(target.budget, budgets)
        parity = verify.check_file(path, held_out["pixels"], held_out["y"], held_out["reference"],
                                   held_out["split"], budget)
    except BaseException:
        _forget(ctx.bundle_dir, path)  # never leave an unchecked, unrecorded file behind
        raise
    row["parity"] = parity
    if parity["passed"]:
        row["status"] = "ok"
    else:
        row.update(status="flagged", flagged="breaks its budget: " + ", ".join(parity["breaches"]))
    return row


def export_row(bundle_dir: Path, path: Path, target: registry.Target, options: dict) -> dict:
    return {
        "path": path.relative_to(bundle_dir).as_posix(),
        "format": target.format,
        "precision": target.precision,
        "size_bytes": path.stat().st_size,
        "sha256": bundle.sha256_file(path),
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
    text = f"{row['path']:<28} {row['size_bytes'] / 1e6:7.2f} MB  {row['status']}"
    parity = row.get("parity")
    if parity:
        text += (f"  agreement {parity['top1_agreement']:.2%}  max|dprob| {parity['max_abs_diff']:.2e}"
                 f"  accuracy {parity['accuracy']:.2%} (keras {parity['keras_accuracy']:.2%})")
    if row.get("flagged"):
        text += f"  -- {row['flagged']}"
    return text
