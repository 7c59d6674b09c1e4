"""Keras -> TFLite: float32, float16, dynamic-range and full-integer int8, metadata inside.

A leaf module: it converts and quantizes, and imports no orchestrator. Each
``export_<precision>(ctx, out)`` writes one file and returns the options it
used; ``ctx`` is the export run's shared context (``exporters.context.Context``).
Full-integer models take and return uint8 by default (what MediaPipe Tasks and
Android apps take); ``--io-dtype`` chooses int8 or float32 instead.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from graft import bundle
from graft.errors import ExportError, first_line
from graft.exporters.graph import serving_function
from graft.exporters.tflite_metadata import add_metadata, io_tensors, mediapipe_problems


def converter(model, size: int):
    """A TFLiteConverter for pixels (N, size, size, 3) float32 in 0..255 -> probs (N, C)."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    serve, _ = serving_function(model, size)
    # Freeze the weights into constants: the converter would otherwise keep Keras 3's
    # variables as resource variables that the interpreter never initialises.
    # An empty module stands in as the trackable owner (nothing is left to own).
    frozen = convert_variables_to_constants_v2(serve.get_concrete_function())
    return tf.lite.TFLiteConverter.from_concrete_functions([frozen], tf.Module())


def representative(pixels: np.ndarray):
    """The representative dataset: the calibration pixels one at a time, float32 0..255.

    The first image has one pixel set to 0 and one to 255, so the calibrated input
    range is the full 0..255: a uint8 input then has scale 1 and zero-point 0, which
    is what MediaPipe Tasks assumes when it feeds raw pixels.
    """
    def generate():
        for i in range(len(pixels)):
            image = pixels[i:i + 1].astype(np.float32)
            if i == 0:
                image[0, 0, 0, 0], image[0, 0, 0, 1] = 0.0, 255.0
            yield [image]
    return generate


def _convert(conv, what: str) -> bytes:
    try:
        from graft.quiet import native_output

        with native_output((1, 2)):  # the converter prints its settings to stdout
            return bytes(conv.convert())
    except Exception as exc:
        raise ExportError(f"the TFLite converter could not produce the {what} model: "
                          f"{first_line(exc, 300)}") from exc


def _tf_dtype(io_dtype: str):
    import tensorflow as tf

    return {"float32": tf.float32, "int8": tf.int8, "uint8": tf.uint8}[io_dtype]


def int8_converter(ctx, io_dtype: str, allow_float: bool = False):
    """A full-integer converter calibrated on the bundle's calibration set."""
    import tensorflow as tf

    pixels, _ = ctx.calibration()
    conv = converter(ctx.keras_model(), ctx.size)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = representative(pixels)
    ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.target_spec.supported_ops = ops + ([tf.lite.OpsSet.TFLITE_BUILTINS] if allow_float else [])
    conv.inference_input_type = conv.inference_output_type = _tf_dtype(io_dtype)
    return conv


# ------------------------------------------------------------- one function per precision
def export_float32(ctx, out: Path) -> dict:
    data = _convert(converter(ctx.keras_model(), ctx.size), "float32")
    write(ctx, out, data, "float32")
    return {"dynamic_batch": True, "io_dtype": "float32"}


def export_float16(ctx, out: Path) -> dict:
    import tensorflow as tf

    conv = converter(ctx.keras_model(), ctx.size)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.target_spec.supported_types = [tf.float16]
    write(ctx, out, _convert(conv, "float16"), "float16", weights="float16")
    return {"dynamic_batch": True, "io_dtype": "float32", "weights": "float16"}


def export_dynamic(ctx, out: Path) -> dict:
    import tensorflow as tf

    conv = converter(ctx.keras_model(), ctx.size)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    write(ctx, out, _convert(conv, "dynamic-range"), "dynamic", weights="int8")
    return {"dynamic_batch": True, "io_dtype": "float32", "weights": "int8", "activations": "dynamic"}


def export_int8(ctx, out: Path) -> dict:
    """Full-integer int8 (TFLITE_BUILTINS_INT8); --exclude-nodes keeps named ops in float."""
    io_dtype = ctx.options.io_dtype
    excluded = list(ctx.exclude_nodes("tflite"))
    if excluded:
        data = int8_keeping_float(ctx, io_dtype, excluded)
    else:
        data = _convert(int8_converter(ctx, io_dtype), "int8")
    _, facts = ctx.calibration()
    quant = {"ops": "TFLITE_BUILTINS_INT8" + (" + float fallback" if excluded else ""),
             "calibration_method": "minmax", "excluded_nodes": excluded}
    write(ctx, out, data, "int8", io_dtype=io_dtype, quantization=quant)
    return {"dynamic_batch": True, "io_dtype": io_dtype, **quant, "calibration": facts}


def calibrated_model(ctx) -> bytes:
    """The float model with calibration statistics, before quantization (made once per run)."""
    conv = int8_converter(ctx, "float32", allow_float=True)
    conv.experimental_mlir_quantizer = True
    conv._experimental_calibrate_only = True  # the path TensorFlow's QuantizationDebugger takes
    return _convert(conv, "calibrated")


def int8_keeping_float(ctx, io_dtype: str, denylist: list[str]) -> bytes:
    """Full-integer int8 except the named nodes, with ``io_dtype`` input and output."""
    from tensorflow.lite.python import convert, util

    calibrated = ctx.once("tflite_calibrated", lambda: calibrated_model(ctx))
    _check_names(calibrated, denylist)
    try:
        data = convert.mlir_quantize(calibrated, fully_quantize=False, denylisted_nodes=denylist)
        return bytes(util.modify_model_io_type(data, _tf_dtype(io_dtype), _tf_dtype(io_dtype)))
    except Exception as exc:
        raise ExportError(f"the TFLite converter could not keep {', '.join(denylist)} in float: "
                          f"{first_line(exc, 300)}") from exc


def _check_names(data: bytes, names: list[str]) -> None:
    from ai_edge_litert.interpreter import Interpreter

    known = {t["name"] for t in Interpreter(model_content=data).get_tensor_details()}
    unknown = [n for n in names if n not in known]
    if unknown:
        shown = ", ".join(sorted(known)[:4])
        raise ExportError(f"--exclude-nodes: no TFLite tensor named {unknown[0]!r}; names look "
                          f"like: {shown}, ... (see worst_layers in graft.json)")


# ---------------------------------------------------------------------------- metadata
def write(ctx, out: Path, data: bytes, precision: str, **facts) -> None:
    """Add standard TFLite Metadata (MediaPipe Tasks reads it) and graft's manifest, then write.

    Nothing may rewrite the file afterwards: the labels travel in a zip appended to it.
    """
    export = {"format": "tflite", "precision": precision, **facts, **io_details(data)}
    export["mediapipe"] = mediapipe_problems(data) or "ok"
    bundle.atomic_write_bytes(out, add_metadata(data, ctx.manifest, export))


def io_details(data: bytes) -> dict:
    """dtype, scale and zero-point of the model's input and output (read from the flatbuffer)."""
    return {role: {key: tensor[key] for key in ("dtype", "scale", "zero_point")}
            for role, tensor in io_tensors(data).items()}
