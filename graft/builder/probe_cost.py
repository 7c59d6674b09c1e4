"""What each probe candidate costs, measured: its classifier's file size and batch-1 latency.

A candidate's classifier is built as ONNX without TensorFlow: the family's
converted feature model (see ``probe_features``) cut at the candidate's pooled
features (``onnx.utils.Extractor``), with the head appended as the build's
head exports (standardisation as Mul and Add, then a dense softmax) carrying
the logistic probe's weights fitted on every scored image. Its int8 version is
a real static quantization by onnxruntime with the settings ``graft export
--precision int8`` uses (QDQ, per-channel int8 weights, uint8 activations,
min-max calibration on the user's images, Softmax kept in float). Each file
is timed at batch 1 by graft's own runtime (``runtime.engines``), and the int8
file's top-1 agreement with the float32 classifier is measured on the probe's
images and judged by export's int8 budget (``int8_agreement``): an int8 option
that would fail `graft export`'s check is refused before anyone builds it.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from graft.errors import GraftError, first_line

OUTPUT = "features"           # the converted feature model's output (onnx_features.convert)
MIN_RUNS, MAX_RUNS = 5, 50    # batch-1 runs timed per file (after warm-up), within TIME_LIMIT
TIME_LIMIT = 0.5              # seconds of timing per file and pass
PASSES = 2                    # round-robin passes over all files (probe.py keeps each file's best)
AGREEMENT_IMAGES = 200        # images (at most) on which each int8 file's agreement is measured


def _concat_inputs(graph) -> list[str]:
    """The pooled tensors the family's Concat joins, in the feature model's cut order."""
    produced = {out: node for node in graph.node for out in node.output}
    name = OUTPUT
    while name in produced and produced[name].op_type in ("Identity", "Reshape", "Squeeze"):
        name = produced[name].input[0]
    node = produced.get(name)
    if node is None or node.op_type != "Concat":
        raise GraftError(f"the converted feature model does not end in a Concat (found "
                         f"{node.op_type if node else 'nothing'}); cannot separate its cuts")
    return list(node.input)


def classifier_onnx(family_onnx: bytes, index: int, dims: list[int], head: dict) -> bytes:
    """The candidate's classifier as ONNX: pixels -> cut ``index`` of the family (``dims``: the
    width of each cut's features) -> head -> probs.

    ``head``: float32 arrays ``scale`` and ``offset`` (D,) of the standardisation, ``weights``
    (D, classes) and ``bias`` (classes,) of the dense softmax layer.
    """
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load_from_string(family_onnx)
    tensor = OUTPUT if len(dims) == 1 else _concat_inputs(model.graph)[index]
    dim, classes = int(dims[index]), int(np.shape(head["bias"])[0])
    known = {v.name for v in model.graph.value_info} | {v.name for v in model.graph.output}
    if tensor not in known:  # the extractor needs the cut's shape, which tf2onnx may not record
        model.graph.value_info.append(
            helper.make_tensor_value_info(tensor, onnx.TensorProto.FLOAT, [None, dim]))
    sub = onnx.utils.Extractor(model).extract_model([model.graph.input[0].name], [tensor])
    sub.graph.initializer.extend(numpy_helper.from_array(np.asarray(head[k], np.float32), f"head_{k}")
                                 for k in ("scale", "offset", "weights", "bias"))
    sub.graph.node.extend([helper.make_node("Mul", [tensor, "head_scale"], ["head_scaled"]),
                           helper.make_node("Add", ["head_scaled", "head_offset"], ["head_standard"]),
                           helper.make_node("MatMul", ["head_standard", "head_weights"], ["head_logits"]),
                           helper.make_node("Add", ["head_logits", "head_bias"], ["head_sum"]),
                           helper.make_node("Softmax", ["head_sum"], ["probs"], axis=-1)])
    del sub.graph.output[:]
    sub.graph.output.append(helper.make_tensor_value_info("probs", onnx.TensorProto.FLOAT, [None, classes]))
    return sub.SerializeToString()


def probe_head(x: np.ndarray, y: np.ndarray, classes: int) -> dict:
    """The head a candidate's classifier carries: the logistic probe fitted on every scored image
    (``x``: their features), with the head's standardisation, as ``classifier_onnx`` takes it."""
    from graft.builder.probe_scores import fit_linear, moments

    x = np.asarray(x, np.float64)
    mean, sd = moments(x)
    weights, bias = fit_linear((x - mean) / sd, y, classes)
    return {"scale": 1 / sd, "offset": -mean / sd, "weights": weights, "bias": bias}


def int8_agreement(int8_bytes: bytes, pixels: np.ndarray, reference: np.ndarray,
                   threads: int | None = None, device: str = "cpu") -> dict:
    """The int8 file's top-1 agreement with the float32 classifier's probabilities ``reference``
    on ``pixels``, with its Wilson 95% interval, judged by export's default int8 budget."""
    from graft.exporters.budgets import breaches, budget_for
    from graft.runtime.engines import open_engine, run_batched
    from graft.stats import wilson

    engine = open_engine("candidate.int8.onnx", device=device, threads=threads, model_bytes=int8_bytes)
    probs = np.concatenate(run_batched(engine, pixels.astype(np.float32)))
    agree = probs.argmax(axis=1) == reference.argmax(axis=1)
    low, high = wilson(int(agree.sum()), len(agree))
    result = {"top1_agreement": round(float(agree.mean()), 4), "agreement_interval": [round(low, 4), round(high, 4)],
              "images": int(len(agree)), "max_abs_diff": round(float(np.abs(probs - reference).max()), 6),
              "reference": "the float32 classifier (the probe's head on the cached features)"}
    result["breaches"] = breaches(result, budget_for("int8"))
    return result


def quantize_int8(model_bytes: bytes, pixels: np.ndarray) -> bytes:
    """Static int8 quantization of a classifier, calibrated on ``pixels`` (N, H, W, 3) 0..255."""
    import logging

    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    logging.getLogger().setLevel(logging.ERROR)  # the quantizer logs each node at INFO
    with tempfile.TemporaryDirectory(prefix="graft-probe-") as tmp:
        source, prepared, out = (Path(tmp) / n for n in ("float.onnx", "prep.onnx", "int8.onnx"))
        source.write_bytes(model_bytes)
        try:
            quant_pre_process(str(source), str(prepared), skip_symbolic_shape=False)
            softmax = [n.name for n in _load(prepared).graph.node if n.op_type == "Softmax"]
            quantize_static(str(prepared), str(out), _Reader(pixels), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                            nodes_to_exclude=softmax)
        except Exception as exc:  # the quantizer raises many untyped errors
            raise GraftError(f"onnxruntime could not quantize a candidate to int8 "
                             f"({first_line(exc, 200)})") from exc
        return out.read_bytes()


def _load(path: Path):
    import onnx

    return onnx.load(str(path))


class _Reader:
    """onnxruntime's CalibrationDataReader: one image per batch."""

    def __init__(self, pixels: np.ndarray):
        self.batches = [p[None].astype(np.float32) for p in pixels]

    def get_next(self):
        return {"pixels": self.batches.pop()} if self.batches else None


def measure(model_bytes: bytes, size: int, threads: int | None = None, device: str = "cpu") -> dict:
    """Batch-1 latency (median ms, with the 10th-90th percentile range and the runs) and size."""
    from graft.runtime.engines import open_engine

    engine = open_engine("candidate.onnx", device=device, threads=threads, model_bytes=model_bytes)
    pixels = np.random.default_rng(0).uniform(0, 255, (1, size, size, 3)).astype(np.float32)
    for _ in range(2):
        engine.run(pixels)
    times, started = [], time.perf_counter()
    while len(times) < MIN_RUNS or (len(times) < MAX_RUNS and time.perf_counter() - started < TIME_LIMIT):
        begin = time.perf_counter()
        engine.run(pixels)
        times.append((time.perf_counter() - begin) * 1e3)
    low, median, high = np.percentile(times, [10, 50, 90])
    return {"latency_ms": round(float(median), 3), "latency_p10_p90_ms": [round(float(low), 3),
            round(float(high), 3)], "runs": len(times), "size_mb": round(len(model_bytes) / 2**20, 3)}
