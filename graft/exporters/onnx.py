"""Keras -> ONNX with tf2onnx (float32), and from it float16, dynamic int8 and static QDQ int8."""

from __future__ import annotations

import json
from pathlib import Path

from graft import bundle
from graft.errors import ExportError, first_line

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
                          f"{first_line(exc, 300)}") from None
    return proto


def embed_manifest(proto, manifest: dict, export: dict | None = None) -> None:
    """Put the portable manifest (plus what this file is) into metadata_props, replacing an old one."""
    portable = bundle.portable_manifest(manifest)
    if export:
        portable["export"] = export
    kept = [(p.key, p.value) for p in proto.metadata_props if p.key != bundle.METADATA_KEY]
    del proto.metadata_props[:]
    for key, value in kept + [(bundle.METADATA_KEY, json.dumps(portable))]:
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


def export_onnx(bundle_dir: str | Path, opset: int = DEFAULT_OPSET, data_root: str | None = None) -> dict:
    """Export the float32 ONNX model, check parity with Keras, record it; return its row."""
    from graft.exporters import registry
    from graft.exporters.export import export_bundle
    from graft.exporters.quantize import ExportOptions

    rows = export_bundle(bundle_dir, [registry.TARGETS[("onnx", "float32")]],
                         ExportOptions(opset=opset, data_root=data_root))
    return rows[0]


# --------------------------------------------------------------------------------------
# One function per precision, called through the registry: (context, output path) -> options.
# The float32 proto is converted once per `graft export` run and the others derive from it.

def _portable(ctx, precision: str, **facts) -> dict:
    return {"format": "onnx", "precision": precision, "io_dtype": "float32", **facts}


def export_float32(ctx, out: Path) -> dict:
    proto = ctx.onnx_proto()
    embed_manifest(proto, ctx.manifest, _portable(ctx, "float32"))
    save_checked(proto, out)
    return {"opset": ctx.options.opset, "dynamic_batch": True}


def export_float16(ctx, out: Path) -> dict:
    """float16 weights and activations inside; float32 input and output kept for callers."""
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    proto = convert_float_to_float16(ctx.onnx_proto(), keep_io_types=True)
    OnnxModel(proto).topological_sort()  # the converter appends its I/O casts at the end
    embed_manifest(proto, ctx.manifest, _portable(ctx, "float16"))
    save_checked(proto, out)
    return {"opset": ctx.options.opset, "dynamic_batch": True, "keep_io_types": True}


def export_dynamic(ctx, out: Path) -> dict:
    """int8 weights, activations quantized on the fly (onnxruntime quantize_dynamic)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    _quiet_ort_logging()
    quantize_dynamic(ctx.onnx_file(), out, weight_type=QuantType.QInt8)
    _restamp(ctx, out, _portable(ctx, "dynamic", weights="int8"))
    return {"opset": ctx.options.opset, "weight_type": "int8", "activations": "dynamic"}


def export_int8(ctx, out: Path) -> dict:
    """Static post-training quantization: QDQ, per-channel int8 weights, calibrated activations."""
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    _quiet_ort_logging()
    pixels, facts = ctx.calibration()
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[ctx.options.calibration_method]
    excluded = list(ctx.exclude_nodes("onnx"))
    source = ctx.onnx_preprocessed()
    try:
        quantize_static(source, out, CalibrationReader(pixels, ctx.onnx_input_name()),
                        quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=method, nodes_to_exclude=excluded,
                        extra_options={"CalibPercentile": 99.999})
    except Exception as exc:
        raise ExportError(f"onnxruntime could not quantize the model to int8: "
                          f"{first_line(exc, 300)}") from None
    quant = {"activations": "uint8 per-tensor (asymmetric)", "weights": "int8 per-channel (symmetric)",
             "format": "QDQ", "calibration_method": ctx.options.calibration_method,
             "excluded_nodes": excluded}
    _restamp(ctx, out, _portable(ctx, "int8", quantization=quant))
    return {"opset": ctx.options.opset, **quant, "pre_processed": True, "calibration": facts}


class CalibrationReader:
    """onnxruntime CalibrationDataReader over runtime-preprocessed pixels (float32 0..255)."""

    def __init__(self, pixels, input_name: str, batch: int = 1):
        # One image per batch: the histogram calibrators (entropy, percentile) stack
        # batches and fail when the last one is shorter.
        self.batches = [pixels[i:i + batch].astype("float32") for i in range(0, len(pixels), batch)]
        self.input_name = input_name
        self.position = 0

    def get_next(self):
        if self.position >= len(self.batches):
            return None
        self.position += 1
        return {self.input_name: self.batches[self.position - 1]}

    def rewind(self):
        self.position = 0

    def __iter__(self):
        return self

    def __next__(self):
        batch = self.get_next()
        if batch is None:
            raise StopIteration
        return batch


def preprocess_for_quantization(source: Path, out: Path) -> None:
    """onnxruntime's quantization pre-processing: symbolic shape inference + graph optimisation."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(source), str(out), skip_symbolic_shape=False)
    except Exception as exc:
        raise ExportError(f"onnxruntime quantization pre-processing failed: "
                          f"{first_line(exc, 300)}") from None


def _restamp(ctx, path: Path, export: dict) -> None:
    """Re-embed the manifest (quantizers drop or keep metadata inconsistently) and check."""
    import onnx

    proto = onnx.load(str(path))
    embed_manifest(proto, ctx.manifest, export)
    save_checked(proto, path)


def _quiet_ort_logging() -> None:
    import logging

    logging.getLogger().setLevel(logging.ERROR)  # onnxruntime.quantization logs via the root logger


def node_names(path: Path) -> list[str]:
    import onnx

    return [node.name for node in onnx.load(str(path)).graph.node]
