"""Keras -> TFLite: float32, float16, dynamic-range and full-integer int8, manifest inside.

The manifest travels in the flatbuffer's ``metadata`` table (name
``graft.manifest``, a buffer of UTF-8 JSON), so a single .tflite file is
self-describing; ``graft.runtime.litert`` reads it back without TensorFlow.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from graft import bundle
from graft.errors import ExportError, first_line


def converter(model, size: int):
    """A TFLiteConverter for pixels (N, size, size, 3) float32 in 0..255 -> probs (N, C)."""
    import tensorflow as tf

    spec = tf.TensorSpec((None, size, size, 3), tf.float32, name="pixels")

    @tf.function(input_signature=[spec])
    def serve(pixels):
        return {"probs": model(pixels, training=False)}

    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    # Freeze the weights into constants: the converter would otherwise keep Keras 3's
    # variables as resource variables that the interpreter never initialises.
    # An empty module stands in as the trackable owner (nothing is left to own).
    frozen = convert_variables_to_constants_v2(serve.get_concrete_function())
    return tf.lite.TFLiteConverter.from_concrete_functions([frozen], tf.Module())


def representative(pixels: np.ndarray):
    """The representative dataset: the calibration pixels one at a time, float32 0..255."""
    def generate():
        for i in range(len(pixels)):
            yield [pixels[i:i + 1].astype(np.float32)]
    return generate


def _convert(conv, what: str) -> bytes:
    try:
        return bytes(conv.convert())
    except Exception as exc:
        raise ExportError(f"the TFLite converter could not produce the {what} model: "
                          f"{first_line(exc, 300)}") from None


def int8_converter(ctx, io_dtype: str, allow_float: bool = False):
    import tensorflow as tf

    pixels, _ = ctx.calibration()
    conv = converter(ctx.keras_model(), ctx.size)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = representative(pixels)
    ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.target_spec.supported_ops = ops + ([tf.lite.OpsSet.TFLITE_BUILTINS] if allow_float else [])
    dtype = {"float32": tf.float32, "int8": tf.int8, "uint8": tf.uint8}[io_dtype]
    conv.inference_input_type = dtype
    conv.inference_output_type = dtype
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
        # The QuantizationDebugger converts with float32 I/O whatever --io-dtype says;
        # record what the file really takes (the runtime scales either way).
        io_dtype = "float32"
        data = _debugger_model(ctx, excluded)
        _check_names(data, excluded)
    else:
        data = _convert(int8_converter(ctx, io_dtype), "int8")
    _, facts = ctx.calibration()
    quant = {"ops": "TFLITE_BUILTINS_INT8" + (" + float fallback" if excluded else ""),
             "calibration_method": "minmax", "excluded_nodes": excluded}
    write(ctx, out, data, "int8", io_dtype=io_dtype, quantization=quant)
    return {"dynamic_batch": True, "io_dtype": io_dtype, **quant, "calibration": facts}


def _debugger_model(ctx, denylist: list[str]) -> bytes:
    import tensorflow as tf

    pixels, _ = ctx.calibration()
    options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=denylist)
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=int8_converter(ctx, "float32", allow_float=True),
        debug_dataset=representative(pixels), debug_options=options)
    try:
        return bytes(debugger.get_nondebug_quantized_model())
    except Exception as exc:
        raise ExportError(f"the TFLite converter could not keep {', '.join(denylist)} in float: "
                          f"{first_line(exc, 300)}") from None


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
    """Embed the manifest plus this file's I/O quantization parameters, then write."""
    export = {"format": "tflite", "precision": precision, **facts, **io_details(data)}
    portable = {**bundle.portable_manifest(ctx.manifest), "export": export}
    data = embed_metadata(data, bundle.METADATA_KEY, json.dumps(portable).encode())
    bundle.atomic_write_bytes(out, data)


def io_details(data: bytes) -> dict:
    """dtype, scale and zero-point of the model's input and output, from the interpreter."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=data)

    def describe(detail):
        scale, zero_point = detail["quantization"]
        return {"dtype": np.dtype(detail["dtype"]).name, "scale": float(scale),
                "zero_point": int(zero_point)}

    return {"input": describe(interpreter.get_input_details()[0]),
            "output": describe(interpreter.get_output_details()[0])}


def embed_metadata(data: bytes, name: str, payload: bytes) -> bytes:
    """Add (or replace) a named metadata buffer in a TFLite flatbuffer."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(data))
    model.metadata = [m for m in (model.metadata or []) if _name(m.name) != name]
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(payload, dtype=np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = name
    entry.buffer = len(model.buffers) - 1
    model.metadata.append(entry)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _name(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# ------------------------------------------------------------------ int8 layer debugging
def layer_errors(ctx) -> list[dict]:
    """Per-layer quantization error (TFLite QuantizationDebugger), worst first.

    The score is the RMSE between the float and the quantized layer output divided
    by the layer's quantization scale, as in TensorFlow's debugger guide.
    """
    import tensorflow as tf

    pixels, _ = ctx.calibration()
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=int8_converter(ctx, "float32", allow_float=True),
        debug_dataset=representative(pixels[:64]))
    debugger.run()
    import csv
    import io

    dump = io.StringIO()
    debugger.layer_statistics_dump(dump)
    rows = []
    for stats in csv.DictReader(io.StringIO(dump.getvalue())):
        scale = float(stats.get("scale") or 0.0)
        rmse = float(np.sqrt(float(stats.get("mean_squared_error") or 0.0)))
        rows.append({"node": stats["tensor_name"], "op": stats.get("op_name", ""),
                     "score": rmse / scale if scale else 0.0, "metric": "rmse/scale"})
    return sorted(rows, key=lambda r: -r["score"])
