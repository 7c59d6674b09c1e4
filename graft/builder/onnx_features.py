"""The frozen backbone as ONNX, for feature extraction with onnxruntime.

The backbone up to the cut is converted once with tf2onnx and kept in the graft
cache as ``onnx/<backbone cache key>.onnx``, with a ``.json`` record beside it
(its sha256, the converter's versions, and the last parity check against Keras).
Features are then computed with the runtime's ONNX engine, the same engine that
serves exported models. A parity check on a sample of images compares them with
the Keras backbone before any vector is stored.
"""

from __future__ import annotations

import hashlib
import json
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from graft.bundle import atomic_path, atomic_write_bytes
from graft.errors import GraftError, first_line
from graft.runtime.pipeline import NO_SPINNING

OPSET = 17
PARITY_SAMPLE = 8
# Allowed |ORT - Keras| on a feature, relative to the largest Keras feature (at least 1).
# A faithful conversion differs by about 1e-6 of it; a broken one by a whole unit.
PARITY_TOLERANCE = 1e-4


class ConversionError(GraftError):
    """The backbone could not be converted to ONNX or loaded by onnxruntime."""


def onnx_paths(cache_root: Path, backbone_key: str) -> tuple[Path, Path]:
    folder = Path(cache_root) / "onnx"
    return folder / f"{backbone_key}.onnx", folder / f"{backbone_key}.json"


def is_converted(cache_root: Path, backbone_key: str) -> bool:
    model, record = onnx_paths(cache_root, backbone_key)
    return model.is_file() and record.is_file()


def backbone_onnx(backbone, cache_root: Path) -> tuple[bytes, dict]:
    """The backbone's ONNX bytes and their record, converting (and caching) them when needed.

    Raises:
        ConversionError: tf2onnx cannot convert the backbone.
    """
    model_path, record_path = onnx_paths(cache_root, backbone.cache_key)
    record = _read_record(record_path)
    if model_path.is_file() and record:
        data = model_path.read_bytes()
        if hashlib.sha256(data).hexdigest() == record.get("sha256"):
            return data, {**{k: v for k, v in record.items() if k != "parity"}, "converted": False}
    started = time.perf_counter()
    data = convert(backbone.model, backbone.image_size)
    import tf2onnx

    record = {"sha256": hashlib.sha256(data).hexdigest(), "opset": OPSET,
              "tf2onnx": tf2onnx.__version__, "size_bytes": len(data),
              "seconds": round(time.perf_counter() - started, 2),
              "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    atomic_write_bytes(model_path, data)
    _write_record(record_path, record)
    return data, {**record, "converted": True}


def convert(model, size: int) -> bytes:
    """pixels (N, size, size, 3) float32 0..255 -> features (N, D), as serialized ONNX."""
    import tensorflow as tf
    import tf2onnx

    spec = tf.TensorSpec((None, size, size, 3), tf.float32, name="pixels")

    @tf.function(input_signature=[spec])
    def features(pixels):
        return {"features": model(pixels, training=False)}

    try:
        proto, _ = tf2onnx.convert.from_function(features, input_signature=(spec,), opset=OPSET)
    except Exception as exc:  # tf2onnx raises many untyped errors
        raise ConversionError(f"tf2onnx could not convert the backbone ({first_line(exc, 200)})") from exc
    return proto.SerializeToString()


def open_extractor(data: bytes, threads: int | None = None):
    """The runtime's ONNX engine on the backbone (CPU, no spinning threads)."""
    from graft.runtime.engines import open_engine

    try:
        return open_engine("backbone.onnx", device="cpu", threads=threads, model_bytes=data,
                           session_config=NO_SPINNING)
    except GraftError as exc:
        raise ConversionError("onnxruntime cannot load the converted backbone "
                              f"({first_line(exc, 200)})") from exc


def extractor_tag(record: dict) -> str:
    """The cache namespace of features computed by this ONNX file with this onnxruntime."""
    import onnxruntime

    digest = hashlib.sha256(f"{record['sha256']}\n{onnxruntime.__version__}".encode()).hexdigest()
    return f"onnxruntime-{digest[:16]}"


def keras_features(model, pixels: np.ndarray) -> np.ndarray:
    """The Keras backbone on a batch of pixels (float32 0..255)."""
    return np.asarray(model.predict_on_batch(np.asarray(pixels, np.float32)), dtype=np.float32)


def check_parity(model, run, pixels: np.ndarray) -> dict:
    """Compare ``run``'s features (onnxruntime) with Keras' on ``pixels``; the record for graft.json.

    ``passed`` is None when there is no image to compare (nothing will be extracted either).
    """
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    if not len(pixels):
        return {"sample": 0, "max_abs_diff": None, "tolerance": None, "passed": None, "checked": now}
    started = time.perf_counter()
    reference = keras_features(model, pixels)
    diff = float(np.abs(run(np.asarray(pixels, np.float32)) - reference).max())
    tolerance = PARITY_TOLERANCE * max(1.0, float(np.abs(reference).max()))
    return {"sample": int(len(pixels)), "max_abs_diff": float(f"{diff:.3g}"),
            "tolerance": float(f"{tolerance:.3g}"), "passed": bool(diff <= tolerance),
            "seconds": round(time.perf_counter() - started, 2), "checked": now}


def stored_parity(cache_root: Path, backbone_key: str, sha: str) -> dict | None:
    """The last passing parity check of this ONNX file, if one was recorded."""
    record = _read_record(onnx_paths(cache_root, backbone_key)[1])
    parity = record.get("parity") if record and record.get("sha256") == sha else None
    return parity if parity and parity.get("passed") else None


def store_parity(cache_root: Path, backbone_key: str, sha: str, parity: dict) -> None:
    path = onnx_paths(cache_root, backbone_key)[1]
    record = _read_record(path)
    if record and record.get("sha256") == sha and parity.get("passed"):
        _write_record(path, {**record, "parity": parity})


def _read_record(path: Path) -> dict | None:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _write_record(path: Path, record: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(record, indent=2, sort_keys=True), encoding="utf-8")
