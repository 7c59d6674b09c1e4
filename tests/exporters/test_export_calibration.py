"""Calibration data: class-balanced from the training split, through the runtime's preprocessing."""

from __future__ import annotations

import numpy as np
import pytest

from models import copy_bundle
from graft import bundle
from graft.errors import GraftError
from graft.exporters import registry
from graft.exporters.export import export_bundle
from graft.exporters.calibration import calibration_rows, calibration_set
from graft.exporters.options import ExportOptions


def rows(counts: dict, split: str = "train") -> list[dict]:
    return [{"label": label, "split": split, "path": f"{label}/{i}.png"}
            for label, n in counts.items() for i in range(n)]


def test_calibration_takes_classes_in_turn():
    samples = rows({"a": 50, "b": 3, "c": 20}) + rows({"a": 9}, split="test")
    chosen = calibration_rows(samples, 20, seed=0)
    counts = {label: sum(r["label"] == label for r in chosen) for label in "abc"}
    assert counts == {"a": 9, "b": 3, "c": 8}  # b runs out; a and c share the rest
    assert all(r["split"] == "train" for r in chosen)
    assert chosen == calibration_rows(samples, 20, seed=0)  # reproducible
    assert chosen != calibration_rows(samples, 20, seed=1)


def test_calibration_set_uses_runtime_preprocessing(edge_bundle):
    from graft.runtime.preprocess import load_pixels

    pixels, facts = calibration_set(edge_bundle, 12)
    manifest = bundle.read_manifest(edge_bundle)
    assert pixels.dtype == np.uint8 and pixels.shape == (12, *manifest["preprocessing"]["size"], 3)
    assert facts["per_class"] == {"blue": 4, "green": 4, "red": 4} and facts["split"] == "train"
    first = calibration_rows(bundle.read_splits(edge_bundle)["samples"], 12)[0]
    np.testing.assert_array_equal(pixels[0], load_pixels(first["file"], manifest["preprocessing"]))


def activation_scales(path) -> dict[str, float]:
    """The scales of the activations' QuantizeLinear nodes (weights are constant-folded)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    init = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    return {n.input[0]: float(init[n.input[1]]) for n in graph.node
            if n.op_type == "QuantizeLinear" and n.input[1] in init and init[n.input[1]].size == 1}


def test_calibration_method_is_applied_and_recorded(edge_bundle, tmp_path):
    scales = {}
    for method in ("minmax", "percentile"):
        out = copy_bundle(edge_bundle, tmp_path / method)
        export_bundle(out, [registry.TARGETS[("onnx", "int8")]],
                      ExportOptions(calibration_size=30, calibration_method=method))
        row = bundle.find_export(bundle.read_manifest(out), "onnx", "int8")
        assert row["options"]["calibration_method"] == method and row["status"] == "ok"
        scales[method] = activation_scales(out / row["path"])
    common = scales["minmax"].keys() & scales["percentile"].keys()  # tf2onnx numbers some names per run
    assert len(common) >= len(scales["minmax"]) // 2 > 0
    # The percentile calibrator clips the range: some activation scale must be smaller.
    assert any(scales["percentile"][t] < scales["minmax"][t] * 0.999 for t in common)


@pytest.mark.parametrize("field, value, message", [
    ("calibration_method", "kl", "--calibration-method 'kl' is not known; allowed: minmax, entropy, percentile"),
    ("io_dtype", "int16", "--io-dtype 'int16' is not known; allowed: uint8, int8, float32"),
    ("calibration_size", 0, "--calibration-size must be a positive integer; received 0"),
])
def test_bad_options_are_refused(field, value, message):
    with pytest.raises(GraftError, match=message):
        ExportOptions(**{field: value}).check()
