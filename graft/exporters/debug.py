"""When int8 breaks its budget: which layers hurt, worst first.

ONNX uses onnxruntime's QDQ debugging (``qdq_loss_debug``): the SQNR, in dB,
between each tensor of the float model and of the QDQ model; a node's score is
the SQNR its block loses (higher is worse). TFLite uses TensorFlow's QuantizationDebugger: RMSE / scale of each
quantized op's output; higher is worse. Both rankings come back worst first as
``{"node", "score", "metric"}`` rows, where ``node`` is what ``--exclude-nodes``
takes for that format.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

DEBUG_IMAGES = 8                    # images whose every activation is compared


def rank_layers(ctx, fmt: str, quantized: Path) -> list[dict]:
    if fmt == "onnx":
        return onnx_layer_errors(ctx, quantized)
    return tflite_layer_errors(ctx)


def onnx_layer_errors(ctx, quantized: Path) -> list[dict]:
    """Per-node quantization error of a QDQ model, worst first."""
    import onnx
    from onnxruntime.quantization.qdq_loss_debug import (collect_activations,
                                                         compute_activation_error,
                                                         create_activation_matching,
                                                         modify_model_output_intermediate_tensors)

    from graft.exporters.onnx import CalibrationReader

    pixels, _ = ctx.calibration()
    name = ctx.onnx_input_name()
    float_aug, qdq_aug = ctx.work / "debug.float.onnx", ctx.work / "debug.qdq.onnx"
    modify_model_output_intermediate_tensors(ctx.onnx_preprocessed(), str(float_aug))
    modify_model_output_intermediate_tensors(str(quantized), str(qdq_aug))
    float_acts = collect_activations(str(float_aug), CalibrationReader(pixels[:DEBUG_IMAGES], name))
    qdq_acts = collect_activations(str(qdq_aug), CalibrationReader(pixels[:DEBUG_IMAGES], name))
    errors = compute_activation_error(create_activation_matching(qdq_acts, float_acts))
    graph = onnx.load(ctx.onnx_preprocessed()).graph
    return sqnr_losses(graph, {t: e.get("xmodel_err") for t, e in errors.items()})


CLEAN_DB = 60.0  # SQNR assumed for inputs no quantizer touched


def sqnr_losses(graph, sqnr: dict) -> list[dict]:
    """Rank nodes by the SQNR (float model vs QDQ model, dB) they lose, worst first.

    A tensor's loss is the SQNR of the cleanest measured tensor feeding its block
    minus its own. Nodes between two measured tensors form the block (a Conv and
    the Relu quantization fused with it), and are excluded together.
    """
    producer = {out: node for node in graph.node for out in node.output}
    rows = []
    for tensor, value in sqnr.items():
        if tensor not in producer or value is None or not np.isfinite(value):
            continue
        block, upstream = _block(producer[tensor], producer, sqnr)
        rows.append({"node": block[0], "nodes": block, "tensor": tensor,
                     "score": float(upstream - value), "sqnr_db": float(value),
                     "metric": "SQNR lost in dB (higher is worse)"})
    return sorted(rows, key=lambda r: -r["score"])


def _block(node, producer: dict, sqnr: dict, depth: int = 4) -> tuple[list[str], float]:
    """The nodes from ``node`` back to the nearest measured tensors, and their best SQNR."""
    names, best, frontier = [node.name], None, [node]
    for _ in range(depth):
        following = []
        for current in frontier:
            for name in current.input:
                value = sqnr.get(name)
                if value is not None and np.isfinite(value):
                    best = value if best is None else max(best, value)
                elif name in producer and producer[name].name not in names:
                    names.append(producer[name].name)
                    following.append(producer[name])
        if best is not None or not following:
            break
        frontier = following
    return names, CLEAN_DB if best is None else min(best, CLEAN_DB)


def describe(ranking: list[dict], top: int = 3) -> str:
    """The worst layers, briefly: the first name of each (TFLite joins fused ops with ';')."""
    return ", ".join(f"{r['node'].split(';')[0]} ({r['score']:.2g})" for r in ranking[:top])


def tflite_layer_errors(ctx) -> list[dict]:
    """Per-layer quantization error (TFLite QuantizationDebugger), worst first.

    The score is the RMSE between the float and the quantized layer output divided
    by the layer's quantization scale, as in TensorFlow's debugger guide.
    """
    import csv
    import io

    import tensorflow as tf

    from graft.exporters.tflite import int8_converter, representative

    import warnings

    from graft.quiet import native_output

    pixels, _ = ctx.calibration()
    # The debugger converts (printing its settings to stdout) and runs TensorFlow's own
    # interpreter, whose deprecation notice is TensorFlow's business, not the user's.
    with native_output((1, 2)), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*tf\.lite\.Interpreter is deprecated")
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=int8_converter(ctx, "float32", allow_float=True),
            debug_dataset=representative(pixels[:64]))
        debugger.run()
    dump = io.StringIO()
    debugger.layer_statistics_dump(dump)
    rows = []
    for stats in csv.DictReader(io.StringIO(dump.getvalue())):
        scale = float(stats.get("scale") or 0.0)
        rmse = float(np.sqrt(float(stats.get("mean_squared_error") or 0.0)))
        rows.append({"node": stats["tensor_name"], "op": stats.get("op_name", ""),
                     "score": rmse / scale if scale else 0.0, "metric": "rmse/scale"})
    return sorted(rows, key=lambda r: -r["score"])
