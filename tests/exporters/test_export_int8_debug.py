"""int8 debugging: which layers hurt, --exclude-nodes, and the automatic exclusion search."""

from __future__ import annotations

import numpy as np
import pytest

from models import copy_bundle
from graft import bundle
from graft.errors import CheckFailed, ExportError
from graft.exporters import registry
from graft.exporters.context import Context
from graft.exporters.export import export_bundle
from graft.exporters.options import ExportOptions

ONNX_INT8 = registry.TARGETS[("onnx", "int8")]
TIGHT = {"int8": {"max_abs_diff": 1e-3}}  # tighter than this model's int8 error (about 6e-3)


@pytest.fixture()
def fresh(edge_bundle, tmp_path):
    return copy_bundle(edge_bundle, tmp_path / "bundle")


def test_breach_names_the_worst_layers(fresh):
    with pytest.raises(CheckFailed, match=r"1 of 1 exports break their budget: exports/model.int8.onnx "
                                          r"\(max \|dprob\| .* > 1e-03\); they are kept and flagged"):
        export_bundle(fresh, [ONNX_INT8], ExportOptions(calibration_size=30), budgets=TIGHT)
    row = bundle.find_export(bundle.read_manifest(fresh), "onnx", "int8")
    assert row["status"] == "flagged"
    assert "worst layers (SQNR lost in dB (higher is worse)): " in row["flagged"]
    worst = row["worst_layers"]
    assert worst and worst[0]["score"] >= worst[-1]["score"]
    assert all(w["node"] in w["nodes"] for w in worst)


def test_exclude_nodes_keeps_them_in_float(fresh):
    import onnx

    ctx = Context(fresh, ExportOptions())
    try:
        convs = [n.name for n in onnx.load(ctx.onnx_preprocessed()).graph.node if n.op_type == "Conv"]
    finally:
        ctx.close()
    keep = convs[0]
    export_bundle(fresh, [ONNX_INT8], ExportOptions(calibration_size=30, exclude_nodes=[f"onnx:{keep}"]))
    row = bundle.find_export(bundle.read_manifest(fresh), "onnx", "int8")
    assert row["options"]["excluded_nodes"] == [keep]
    model = onnx.load(str(fresh / row["path"]))
    producers = {out: node.op_type for node in model.graph.node for out in node.output}
    node = next(n for n in model.graph.node if n.name == keep)
    assert node.op_type == "Conv"
    initializers = {init.name: init for init in model.graph.initializer}
    assert node.input[1] in initializers  # float weights, no DequantizeLinear in front
    assert initializers[node.input[1]].data_type == onnx.TensorProto.FLOAT
    others = [n for n in model.graph.node if n.op_type == "Conv" and n.name != keep]
    assert others and all(producers.get(n.input[1]) == "DequantizeLinear" for n in others)


def test_unknown_exclude_node_is_refused(fresh):
    with pytest.raises(ExportError, match="--exclude-nodes: no ONNX node named 'nope' in the "
                                          "pre-processed model; names look like: "):
        export_bundle(fresh, [ONNX_INT8], ExportOptions(exclude_nodes=["nope"]))


def test_unknown_tflite_exclude_node_is_refused(fresh):
    with pytest.raises(ExportError, match="--exclude-nodes: no TFLite tensor named 'nope'; names look like: "):
        export_bundle(fresh, [registry.TARGETS[("tflite", "int8")]],
                      ExportOptions(calibration_size=30, exclude_nodes=["tflite:nope"]))
    assert bundle.find_export(bundle.read_manifest(fresh), "tflite", "int8") is None


def test_auto_exclude_searches_until_the_budget_holds(fresh):
    lines = []
    rows = export_bundle(fresh, [ONNX_INT8], ExportOptions(calibration_size=30, auto_exclude=True),
                         budgets=TIGHT, echo=lines.append)
    row = rows[0]
    assert row["status"] == "ok" and row["parity"]["max_abs_diff"] <= 1e-3
    info = row["auto_exclude"]
    assert info["passed"] and info["excluded_nodes"] == row["options"]["excluded_nodes"]
    assert [t["excluded"] for t in info["tried"]][:2] == [1, 2]
    assert info["tried"][-1]["passed"] and not info["tried"][0]["passed"]
    assert info["before"]["size_bytes"] > 0 and info["after"]["throughput_batch32"] > 0
    assert info["size_cost"] == pytest.approx(info["after"]["size_bytes"] / info["before"]["size_bytes"] - 1)
    assert any("auto-exclude kept" in line for line in lines)
    recorded = bundle.find_export(bundle.read_manifest(fresh), "onnx", "int8")
    assert recorded["auto_exclude"]["excluded_nodes"] == info["excluded_nodes"]


def test_tflite_layers_are_ranked_and_can_be_kept_in_float(fresh):
    from ai_edge_litert.interpreter import Interpreter

    from graft.exporters.debug import tflite_layer_errors

    ctx = Context(fresh, ExportOptions(calibration_size=30))
    try:
        ranking = tflite_layer_errors(ctx)
    finally:
        ctx.close()
    assert ranking and ranking[0]["metric"] == "rmse/scale"
    assert ranking[0]["score"] >= ranking[-1]["score"]
    keep = ranking[0]["node"]
    export_bundle(fresh, [registry.TARGETS[("tflite", "int8")]],
                  ExportOptions(calibration_size=30, exclude_nodes=[f"tflite:{keep}"]))
    row = bundle.find_export(bundle.read_manifest(fresh), "tflite", "int8")
    assert row["options"]["excluded_nodes"] == [keep] and "float fallback" in row["options"]["ops"]
    interpreter = Interpreter(model_path=str(fresh / row["path"]))
    dtypes = {t["name"]: t["dtype"] for t in interpreter.get_tensor_details()}
    assert dtypes[keep] == np.float32  # the named op's output stayed float
    assert any(d == np.int8 for d in dtypes.values())  # the rest is still int8
