"""ONNX files that generic tools read: conventional metadata, a named batch dimension, no
quantizer leftovers, float probabilities from int8, and dynamic int8 checked at batch 1 too."""

from __future__ import annotations

import json

import numpy as np
import pytest

from graft import bundle
from graft.exporters import registry

ONNX_TARGETS = [t for t in registry.TARGETS.values() if t.format == "onnx"]


@pytest.mark.parametrize("target", ONNX_TARGETS, ids=lambda t: t.key)
def test_generic_tools_see_graft_and_the_labels(exported_bundle, target):
    import onnx

    manifest = bundle.read_manifest(exported_bundle)
    model = onnx.load(str(exported_bundle / "exports" / target.filename))
    assert model.producer_name == "graft" and model.producer_version
    assert isinstance(model.model_version, int) and model.model_version > 20000000000000
    assert model.graph.name == manifest["name"] and "pixels" in model.doc_string
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props["labels"]) == manifest["labels"]
    assert props["Image.BitmapPixelFormat"] == "Rgb8" and props["Image.NominalPixelRange"] == "NominalRange_0_255"
    assert json.loads(props["input_size"]) == manifest["preprocessing"]["size"] and props["input_layout"] == "NHWC"
    assert set(props) <= {"labels", "Image.BitmapPixelFormat", "Image.ColorSpaceGamma", "Image.NominalPixelRange",
                          "input_layout", "input_size", "channel_order", "pixel_range", "resize",
                          bundle.METADATA_KEY}  # the quantizers' own keys are gone
    for value in (model.graph.input[0], model.graph.output[0]):
        assert value.type.tensor_type.shape.dim[0].dim_param == "batch"
    used = {node.domain or "" for node in model.graph.node}
    assert {op.domain or "" for op in model.opset_import} <= used | {"", "ai.onnx"}


def test_int8_keeps_the_softmax_in_float(exported_bundle, held_out):
    import onnx
    import onnxruntime as ort

    path = exported_bundle / "exports" / "model.int8.onnx"
    graph = onnx.load(str(path)).graph
    softmax = next(n for n in graph.node if n.op_type == "Softmax")
    assert graph.output[0].name == softmax.output[0]  # the probabilities come straight from it
    assert not any(n.op_type == "QuantizeLinear" and n.input[0] == softmax.output[0] for n in graph.node)
    pixels = held_out[0].astype(np.float32)
    probs = ort.InferenceSession(str(path)).run(None, {graph.input[0].name: pixels})[0]
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)  # real probabilities


def test_dynamic_int8_is_checked_at_batch_1_and_32(exported_bundle):
    row = bundle.find_export(bundle.read_manifest(exported_bundle), "onnx", "dynamic")
    per_batch = row["parity"]["per_batch"]
    assert set(per_batch) == {"1", "32"}
    worst = min(r["top1_agreement"] for r in per_batch.values())
    assert row["parity"]["top1_agreement"] == worst


def test_static_int8_runs_in_the_onnx_reference_evaluator(exported_bundle, held_out):
    """QDQ at opset 19, so the ONNX reference implementation (a generic tool) runs it too."""
    import onnx
    import onnxruntime as ort
    from onnx.reference import ReferenceEvaluator

    path = exported_bundle / "exports" / "model.int8.onnx"
    model = onnx.load(str(path))
    assert next(op.version for op in model.opset_import if op.domain in ("", "ai.onnx")) >= 19
    row = bundle.find_export(bundle.read_manifest(exported_bundle), "onnx", "int8")
    assert row["options"]["opset"] >= 19
    pixels = held_out[0][:4].astype(np.float32)
    reference = ReferenceEvaluator(model).run(None, {"pixels": pixels})[0]
    runtime = ort.InferenceSession(str(path)).run(None, {"pixels": pixels})[0]
    np.testing.assert_allclose(reference, runtime, atol=2e-2)
