"""`graft inspect`: what a bundle or a single exported file says about itself."""

from __future__ import annotations

import json
from pathlib import Path

from graft.bundle import METADATA_KEY, is_bundle, read_manifest, sha256_file


def describe_model(path: str) -> list[str]:
    if is_bundle(path):
        manifest = read_manifest(path)
        lines = _describe_manifest(manifest)
        lines.append("exports:")
        for row in manifest.get("exports", []):
            file = Path(path, row["path"])
            if not file.is_file():
                state = "MISSING"
            elif sha256_file(file) != row.get("sha256"):
                state = "SHA256 MISMATCH"
            else:
                state = "ok"
            if row.get("status") in ("flagged", "unverified"):
                state += f" {row['status'].upper()}"
            if _passes_only_a_looser_budget(row):
                state += " (passes only a looser budget)"
            parity = row.get("parity", {})
            extra = (f"  agreement {parity['top1_agreement']:.2%} (n={parity.get('images', '?')}) "
                     f"max|d| {parity['max_abs_diff']:.1e}" if "top1_agreement" in parity else "")
            lines.append(f"  {row['path']}  {row['format']}:{row['precision']}  "
                         f"{row['size_bytes'] / 1e6:.2f} MB  sha256 {row['sha256'][:12]}  {state}{extra}")
        if not manifest.get("exports"):
            lines.append("  (none; run `graft export`)")
        return lines
    from graft.runtime.engines import open_engine

    engine = open_engine(path, device="cpu")
    standard = _standard_metadata(Path(path), engine)
    if engine.manifest is None:
        return [f"model: {path}", f"format: {engine.format}", "manifest: none embedded", _tensors(engine),
                *standard]
    lines = _describe_manifest(engine.manifest)
    lines.insert(0, f"model: {path} ({engine.format}, sha256 {sha256_file(path)[:12]})")
    return lines + [_tensors(engine)] + standard


def _tensors(engine) -> str:
    """The file's own tensors: a full-integer file takes and returns uint8, while the
    manifest's ``input`` is the float contract of the model it was exported from."""
    shape = ", ".join("N" if d is None else str(d) for d in engine.input_shape)
    return f"file tensors: input {engine.input_dtype.name} ({shape}), output {engine.output_dtype.name}"


def _passes_only_a_looser_budget(row: dict) -> bool:
    """Flagged, although its latest check passed: the budget it was checked with is looser than
    the default, which it breaks."""
    check = row.get("verification") or row.get("parity") or {}
    return row.get("status") == "flagged" and check.get("passed") is True and bool(check.get("default_breaches"))


def _standard_metadata(path: Path, engine) -> list[str]:
    """What stock tools read: ONNX's model fields and metadata_props, TFLite's standard metadata."""
    if engine.format == "onnx":
        meta = engine.session.get_modelmeta()
        props = {k: v for k, v in meta.custom_metadata_map.items() if k != METADATA_KEY}
        version = f" model_version {meta.version}" if meta.version else ""
        lines = [f"onnx: producer {meta.producer_name}{version}, graph {meta.graph_name}"]
        lines += [f"  {key}: {value}" for key, value in sorted(props.items())]
        return lines
    if engine.format == "tflite":
        from graft.runtime.tflite_metadata import associated_files, read_labels

        data = path.read_bytes()
        labels = read_labels(data, str(path))
        files = sorted(associated_files(data, str(path)))
        return [f"tflite metadata: {'standard (MediaPipe Tasks, TFLite Task Library)' if labels else 'none'}; "
                f"associated files: {', '.join(files) or 'none'}",
                f"  labels.txt ({len(labels or [])}): {', '.join(labels or [])}"]
    return []


def _describe_manifest(manifest: dict) -> list[str]:
    prep = manifest["preprocessing"]
    backbone = manifest.get("backbone", {})
    weights = backbone.get("weights", {})
    lines = [
        f"name: {manifest.get('name', '')}",
        f"labels ({len(manifest['labels'])}): {', '.join(manifest['labels'])}",
        f"input: {json.dumps(manifest['input'])}",
        f"preprocessing: {prep['size'][0]}x{prep['size'][1]} {prep.get('resize', 'stretch')} "
        f"{prep.get('interpolation', 'bilinear')} {prep.get('channel_order', 'RGB')} "
        f"range {prep.get('range', [0, 255])}",
        f"backbone: {backbone.get('name', '?')}"
        + (f" weights {weights.get('source')} sha256 {str(weights.get('sha256', ''))[:12]}" if weights else ""),
        f"created: {manifest.get('created', '?')}  graft {manifest.get('graft_version', '?')}",
    ]
    if manifest.get("metrics", {}).get("accuracy") is not None:
        lines.append(f"test accuracy: {manifest['metrics']['accuracy']:.4f}")
    return lines
