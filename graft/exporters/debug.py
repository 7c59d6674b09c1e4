"""When int8 breaks its budget: which layers hurt, and keeping the worst ones in float.

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

from graft.errors import ExportError

STEPS = (1, 2, 4, 8, 16, 32, 64)   # how many of the worst layers the search keeps in float
DEBUG_IMAGES = 8                    # images whose every activation is compared


def rank_layers(ctx, fmt: str, quantized: Path) -> list[dict]:
    if fmt == "onnx":
        return onnx_layer_errors(ctx, quantized)
    from graft.exporters.tflite import layer_errors

    return layer_errors(ctx)


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


def auto_exclude(ctx, target, row: dict, held_out: dict, budgets: dict | None, echo) -> dict:
    """Keep the worst layers in float, more each round, until the budget holds (or give up)."""
    from graft.exporters.export import export_one

    path = ctx.bundle_dir / row["path"]
    ranking = rank_layers(ctx, target.format, path)
    before = {"size_bytes": row["size_bytes"], "throughput_batch32": throughput(path),
              "top1_agreement": row["parity"]["top1_agreement"], "accuracy": row["parity"]["accuracy"]}
    tried, current = [], row
    for count in [n for n in STEPS if n < len(ranking)] + [len(ranking)]:
        names = list(dict.fromkeys(n for r in ranking[:count] for n in r.get("nodes", [r["node"]])))
        ctx.excluded[target.format] = names
        try:
            attempt = export_one(ctx, target, held_out, budgets)
        except ExportError as exc:  # e.g. the converter refuses to keep this many in float
            tried.append({"excluded": count, "nodes": len(names), "passed": False, "error": str(exc)})
            echo(f"  auto-exclude: worst {count} layer(s) in float -> {exc}")
            break
        current = attempt
        parity = current["parity"]
        tried.append({"excluded": count, "nodes": len(names), "passed": parity["passed"],
                      **{k: parity[k] for k in ("top1_agreement", "accuracy", "max_abs_diff")}})
        echo(f"  auto-exclude: worst {count} layer(s) in float -> agreement "
             f"{parity['top1_agreement']:.2%}, accuracy {parity['accuracy']:.2%}, "
             f"max|dprob| {parity['max_abs_diff']:.2e}")
        if current["status"] == "ok":
            break
    ctx.excluded.pop(target.format, None)
    after_path = ctx.bundle_dir / current["path"]
    after = {"size_bytes": current["size_bytes"], "throughput_batch32": throughput(after_path),
             "top1_agreement": current["parity"]["top1_agreement"],
             "accuracy": current["parity"]["accuracy"]}
    current["auto_exclude"] = {
        "excluded_nodes": current["options"].get("excluded_nodes", []), "tried": tried,
        "worst_layers": ranking[:10], "before": before, "after": after,
        "size_cost": after["size_bytes"] / before["size_bytes"] - 1,
        "speed_cost": 1 - after["throughput_batch32"] / before["throughput_batch32"],
        "passed": current["status"] == "ok"}
    return current


def throughput(path: Path, batch: int = 32) -> float:
    """A quick batch-32 images/s figure on random pixels, for the cost of exclusions."""
    from graft.exporters.verify import measure_speed
    from graft.runtime.engines import open_engine

    engine = open_engine(path, device="cpu")
    size = engine.manifest["preprocessing"]["size"] if engine.manifest else [224, 224]
    pixels = np.random.default_rng(0).integers(0, 256, (batch, *size, 3), dtype=np.uint8)
    return measure_speed(engine, pixels, seconds=1.0)["throughput_batch32"]


def describe(ranking: list[dict], top: int = 3) -> str:
    """The worst layers, briefly: the first name of each (TFLite joins fused ops with ';')."""
    return ", ".join(f"{r['node'].split(';')[0]} ({r['score']:.2g})" for r in ranking[:top])
