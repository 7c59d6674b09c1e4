"""Keras -> ONNX with tf2onnx: dynamic batch, manifest in metadata_props, parity-checked."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from graft import bundle
from graft.errors import CheckFailed, ExportError
from graft.exporters import verify

DEFAULT_OPSET = 17


def convert(model, size: int, opset: int = DEFAULT_OPSET):
    """Return an onnx.ModelProto taking pixels (N, size, size, 3) float32 -> probs (N, C)."""
    import tensorflow as tf
    import tf2onnx

    spec = (tf.TensorSpec((None, size, size, 3), tf.float32, name="pixels"),)

    @tf.function(input_signature=spec)
    def serve(pixels):
        return {"probs": model(pixels, training=False)}

    try:
        proto, _ = tf2onnx.convert.from_function(serve, input_signature=spec, opset=opset)
    except Exception as exc:
        raise ExportError(f"tf2onnx could not convert the model at opset {opset}: "
                          f"{str(exc).splitlines()[0][:300]}") from None
    return proto


def embed_manifest(proto, manifest: dict) -> None:
    """Put the portable manifest into the model's metadata_props (replacing an old one)."""
    kept = [(p.key, p.value) for p in proto.metadata_props if p.key != bundle.METADATA_KEY]
    del proto.metadata_props[:]
    for key, value in kept + [(bundle.METADATA_KEY, json.dumps(bundle.portable_manifest(manifest)))]:
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def save_checked(proto, path: Path) -> None:
    """onnx.checker, then an atomic write."""
    import onnx

    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:
        raise ExportError(f"the converted ONNX model fails onnx.checker: {str(exc)[:300]}") from None
    bundle.atomic_write_bytes(path, proto.SerializeToString())


def export_row(bundle_dir: Path, path: Path, fmt: str, precision: str, options: dict) -> dict:
    import onnxruntime

    tools = {"onnxruntime": onnxruntime.__version__}
    try:
        import onnx
        import tf2onnx

        tools.update(onnx=onnx.__version__, tf2onnx=tf2onnx.__version__)
    except ImportError:
        pass
    return {
        "path": path.relative_to(bundle_dir).as_posix(),
        "format": fmt,
        "precision": precision,
        "size_bytes": path.stat().st_size,
        "sha256": bundle.sha256_file(path),
        "options": options,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "tools": tools,
    }


def export_onnx(bundle_dir: str | Path, opset: int = DEFAULT_OPSET, data_root: str | None = None) -> dict:
    """Export the float32 ONNX model, check parity with Keras, record it; return its row."""
    bundle_dir = Path(bundle_dir)
    manifest = bundle.read_manifest(bundle_dir)
    size = manifest["preprocessing"]["size"][0]
    model = verify.load_keras(bundle_dir)
    proto = convert(model, size, opset)
    embed_manifest(proto, manifest)
    path = bundle_dir / bundle.EXPORTS_DIR / "model.float32.onnx"
    pixels, _, split = verify.load_split(bundle_dir, "test", data_root)
    reference = verify.keras_probs(bundle_dir, pixels)
    save_checked(proto, path)
    try:
        parity = check_parity(path, pixels, reference, split, verify.FLOAT32_BUDGET)
    except BaseException:
        path.unlink(missing_ok=True)  # never leave an unrecorded file behind
        raise
    row = export_row(bundle_dir, path, "onnx", "float32", {"opset": opset, "dynamic_batch": True})
    row["parity"] = parity
    bundle.record_export(bundle_dir, row)
    if not parity["passed"]:
        raise CheckFailed(f"{path.name}: parity with Keras failed on {parity['images']} {split} images: "
                          f"agreement {parity['top1_agreement']:.2%} (need 100%), max |dprob| "
                          f"{parity['max_abs_diff']:.2e} (limit {parity['budget']['max_abs_diff']:.0e}); "
                          "the file is kept and flagged in graft.json")
    return row


def check_parity(path: Path, pixels, reference, split: str, budget: dict) -> dict:
    """Run the exported file through the runtime and compare with the Keras probabilities."""
    from graft.runtime.engines import open_engine

    engine = open_engine(path, device="cpu")
    candidate = engine.run(pixels)
    result = verify.compare(reference, candidate)
    return {"reference": "keras", "split": split, **result, "budget": dict(budget),
            "passed": verify.within(result, budget)}
