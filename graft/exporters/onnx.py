"""Keras -> ONNX with tf2onnx (float32), and from it float16, dynamic int8 and static QDQ int8.

A leaf module: it converts and quantizes, and imports no orchestrator. Each
``export_<precision>(ctx, out)`` writes one file and returns the options it
used; ``ctx`` is the export run's shared context (``exporters.context.Context``).
"""

from __future__ import annotations

from pathlib import Path

from graft.errors import ExportError, first_line
from graft.exporters.graph import serving_function
from graft.exporters.onnx_metadata import save_checked, stamp


def convert(model, size: int, opset: int):
    """An onnx.ModelProto taking pixels (N, size, size, 3) float32 -> probs (N, C)."""
    import tf2onnx

    serve, spec = serving_function(model, size)
    try:
        proto, _ = tf2onnx.convert.from_function(serve, input_signature=spec, opset=opset)
    except Exception as exc:
        raise ExportError(f"tf2onnx could not convert the model at opset {opset}: "
                          f"{first_line(exc, 300)}") from exc
    return proto


def _facts(precision: str, **facts) -> dict:
    return {"format": "onnx", "precision": precision, "io_dtype": "float32", **facts}


def export_float32(ctx, out: Path) -> dict:
    proto = ctx.onnx_proto()
    stamp(proto, ctx.manifest, _facts("float32"))
    save_checked(proto, out)
    return {"opset": ctx.options.opset, "dynamic_batch": True}


def export_float16(ctx, out: Path) -> dict:
    """float16 weights and activations inside; float32 input and output kept for callers."""
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    proto = convert_float_to_float16(ctx.onnx_proto(), keep_io_types=True)
    OnnxModel(proto).topological_sort()  # the converter appends its I/O casts at the end
    stamp(proto, ctx.manifest, _facts("float16"))
    save_checked(proto, out)
    return {"opset": ctx.options.opset, "dynamic_batch": True, "keep_io_types": True}


def export_dynamic(ctx, out: Path) -> dict:
    """int8 weights, activations quantized on the fly (onnxruntime quantize_dynamic)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    _quiet_ort_logging()
    try:
        quantize_dynamic(ctx.onnx_file(), out, weight_type=QuantType.QInt8)
    except Exception as exc:
        raise ExportError(f"onnxruntime could not quantize the model dynamically: "
                          f"{first_line(exc, 300)}") from exc
    _restamp(ctx, out, _facts("dynamic", weights="int8"))
    return {"opset": ctx.options.opset, "weight_type": "int8", "activations": "dynamic"}


def export_int8(ctx, out: Path) -> dict:
    """Static post-training quantization: QDQ, per-channel int8 weights, calibrated activations.

    The final Softmax stays in float, so probabilities sum to 1 and every runtime agrees.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    _quiet_ort_logging()
    pixels, facts = ctx.calibration()
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[ctx.options.calibration_method]
    excluded = list(ctx.exclude_nodes("onnx"))
    source = ctx.onnx_preprocessed()
    kept_float = softmax_nodes(Path(source))
    try:
        quantize_static(source, out, CalibrationReader(pixels, ctx.onnx_input_name()),
                        quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=method, nodes_to_exclude=excluded + kept_float,
                        extra_options={"CalibPercentile": 99.999})
    except Exception as exc:
        raise ExportError(f"onnxruntime could not quantize the model to int8: "
                          f"{first_line(exc, 300)}") from exc
    quant = {"activations": "uint8 per-tensor (asymmetric)", "weights": "int8 per-channel (symmetric)",
             "format": "QDQ", "calibration_method": ctx.options.calibration_method,
             "excluded_nodes": excluded, "float_nodes": kept_float}
    opset = _restamp(ctx, out, _facts("int8", quantization=quant), opset=QDQ_OPSET)
    return {"opset": opset, **quant, "pre_processed": True, "calibration": facts}


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
                          f"{first_line(exc, 300)}") from exc


def _restamp(ctx, path: Path, export: dict, opset: int | None = None) -> int:
    """Re-stamp the metadata (quantizers drop or keep it inconsistently), clean up, check.

    With ``opset``, first move the model to that opset when the ONNX version converter
    can (else it stays at the conversion's). Returns the file's opset.
    """
    import onnx

    proto = onnx.load(str(path))
    if opset:
        proto = _at_opset(proto, opset)
    stamp(proto, ctx.manifest, export)
    save_checked(proto, path)
    return next(op.version for op in proto.opset_import if (op.domain or "") in ("", "ai.onnx"))


QDQ_OPSET = 19  # the first opset whose QuantizeLinear/DequantizeLinear the ONNX reference evaluator runs


def _at_opset(proto, opset: int):
    """``proto`` converted to ``opset`` (checked), or unchanged when the converter cannot."""
    import onnx
    from onnx import version_converter

    try:
        converted = version_converter.convert_version(proto, opset)
        onnx.checker.check_model(converted)
        return converted
    except Exception:  # an op the converter does not know: the file keeps the conversion's opset
        return proto


def _quiet_ort_logging() -> None:
    import logging

    logging.getLogger().setLevel(logging.ERROR)  # onnxruntime.quantization logs via the root logger


def node_names(path: Path) -> list[str]:
    import onnx

    return [node.name for node in onnx.load(str(path)).graph.node]


def softmax_nodes(path: Path) -> list[str]:
    """Names of the Softmax nodes that produce a graph output (the model's probabilities)."""
    import onnx

    graph = onnx.load(str(path)).graph
    outputs = {o.name for o in graph.output}
    return [n.name for n in graph.node if n.op_type == "Softmax" and set(n.output) & outputs]
