"""Every registered format x precision: exported once, recorded, and round-tripped through the runtime."""

from __future__ import annotations

import json

import numpy as np
import pytest

from graft import bundle
from graft.exporters import registry
from graft.runtime.classifier import Classifier
from graft.runtime.engines import open_engine

# What each combination must satisfy against Keras on the held-out split: the
# largest |dprob| expected and the dtype of the file's input tensor.
CASES = {
    ("onnx", "float32"): {"max_abs_diff": 1e-5, "input_dtype": "float32"},
    ("onnx", "float16"): {"max_abs_diff": 5e-3, "input_dtype": "float32"},
    ("onnx", "dynamic"): {"max_abs_diff": 5e-2, "input_dtype": "float32"},
    ("onnx", "int8"): {"max_abs_diff": 5e-2, "input_dtype": "float32"},
    ("tflite", "float32"): {"max_abs_diff": 1e-5, "input_dtype": "float32"},
    ("tflite", "float16"): {"max_abs_diff": 5e-3, "input_dtype": "float32"},
    ("tflite", "dynamic"): {"max_abs_diff": 5e-2, "input_dtype": "float32"},
    ("tflite", "int8"): {"max_abs_diff": 5e-2, "input_dtype": "uint8"},  # what MediaPipe takes
}
TARGETS = list(registry.TARGETS.values())


def test_every_registered_combination_has_a_case():
    missing = [t.key for t in TARGETS if (t.format, t.precision) not in CASES]
    assert not missing, f"registered export targets without a test case: {missing}"
    assert len(TARGETS) == len(registry.FORMATS) * len(registry.PRECISIONS)


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: t.key)
def test_export_is_recorded(exported_bundle, target):
    manifest = bundle.read_manifest(exported_bundle)
    row = bundle.find_export(manifest, target.format, target.precision)
    assert row is not None
    path = exported_bundle / row["path"]
    assert row["path"] == f"exports/{target.filename}"
    assert path.is_file() and row["size_bytes"] == path.stat().st_size
    assert row["sha256"] == bundle.sha256_file(path)
    assert row["status"] == "ok" and row["parity"]["passed"]
    assert row["parity"]["reference"] == "keras" and row["parity"]["images"] > 0
    if target.precision == "int8":
        calibration = row["calibration"]
        assert calibration["split"] == "train" and calibration["images"] == 30
        assert sorted(calibration["per_class"].values()) == [10, 10, 10]  # class-balanced


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: t.key)
def test_round_trip_through_runtime(exported_bundle, held_out, colour_pngs, target):
    case = CASES[(target.format, target.precision)]
    pixels, y, reference = held_out
    clf = Classifier.load(exported_bundle, device="cpu", artifact=target.key)
    assert clf.engine.format == target.format
    assert str(clf.engine.input_dtype) == case["input_dtype"]
    probs = clf.predict_pixels(pixels)
    assert probs.dtype == np.float32 and probs.shape == reference.shape
    assert np.abs(probs - reference).max() <= case["max_abs_diff"]
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=2e-2)
    assert (probs.argmax(1) == reference.argmax(1)).all()
    for label, path in colour_pngs.items():
        assert clf.predict(path, top_k=1)[0].label == label


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: t.key)
def test_manifest_travels_inside_each_file(exported_bundle, tmp_path, target):
    """A single file, copied out of the bundle, is enough: labels and preprocessing inside."""
    lone = tmp_path / f"lone{registry.FORMATS[target.format]}"
    lone.write_bytes((exported_bundle / "exports" / target.filename).read_bytes())
    engine = open_engine(lone, device="cpu")
    manifest = bundle.read_manifest(exported_bundle)
    assert engine.manifest["labels"] == manifest["labels"]
    assert engine.manifest["preprocessing"] == manifest["preprocessing"]
    assert engine.manifest["export"]["format"] == target.format
    assert engine.manifest["export"]["precision"] == target.precision
    clf = Classifier.load(lone, device="cpu")
    assert clf.labels == manifest["labels"]


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: t.key)
def test_inspect_shows_the_files_own_tensors(exported_bundle, target):
    """The manifest's input is the model's float contract; inspect also says what the file takes."""
    from click.testing import CliRunner

    from graft.cli import cli

    result = CliRunner().invoke(cli, ["inspect", str(exported_bundle / "exports" / target.filename)])
    assert result.exit_code == 0, result.output
    dtype = CASES[(target.format, target.precision)]["input_dtype"]
    size = bundle.read_manifest(exported_bundle)["preprocessing"]["size"]
    assert f"file tensors: input {dtype} (N, {size[0]}, {size[1]}, 3), output {dtype}\n" in result.output


def test_tflite_manifest_states_io_quantization(exported_bundle):
    engine = open_engine(exported_bundle / "exports" / "model.int8.tflite", device="cpu")
    export = engine.manifest["export"]
    assert export["io_dtype"] == "uint8"
    assert export["input"]["dtype"] == "uint8" and export["output"]["dtype"] == "uint8"
    assert export["output"]["scale"] > 0  # the runtime dequantizes with it
    assert export["quantization"]["ops"] == "TFLITE_BUILTINS_INT8"


def test_onnx_int8_is_qdq_per_channel(exported_bundle):
    import onnx

    model = onnx.load(str(exported_bundle / "exports" / "model.int8.onnx"))
    ops = {node.op_type for node in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    weight_scales = [init for init in model.graph.initializer
                     if init.name.endswith("_scale") and len(init.dims) == 1 and init.dims[0] > 1]
    assert weight_scales, "expected per-channel weight scales"
    meta = {p.key: p.value for p in model.metadata_props}
    export = json.loads(meta[bundle.METADATA_KEY])["export"]
    assert export["quantization"]["format"] == "QDQ"


def test_onnx_float16_keeps_float32_io(exported_bundle):
    import onnx

    model = onnx.load(str(exported_bundle / "exports" / "model.float16.onnx"))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(init.data_type == onnx.TensorProto.FLOAT16 for init in model.graph.initializer)


def test_select_rejects_unknown_names():
    from graft.errors import GraftError

    assert [t.key for t in registry.select("onnx", "float32")] == ["onnx:float32"]
    assert len(registry.select("all", "all")) == len(registry.TARGETS)
    with pytest.raises(GraftError, match="--precision 'int4' is not known; allowed: float32, float16"):
        registry.select("onnx", "int4")
