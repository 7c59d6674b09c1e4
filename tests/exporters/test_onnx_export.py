import json
import shutil

import numpy as np
import pytest

from graft import bundle
from graft.errors import ExportError
from graft.exporters import parity
from graft.exporters.export import export_onnx
from graft.exporters.parity import CheckImages
from graft.runtime import Classifier


def test_onnx_file_is_valid_self_describing_and_recorded(built_bundle):
    import onnx

    manifest = bundle.read_manifest(built_bundle)
    row = bundle.find_export(manifest, "onnx", "float32")
    path = built_bundle / row["path"]
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"  # dynamic, named
    embedded = json.loads({p.key: p.value for p in model.metadata_props}[bundle.METADATA_KEY])
    assert embedded["labels"] == manifest["labels"]
    assert embedded["preprocessing"] == manifest["preprocessing"]
    assert row["size_bytes"] == path.stat().st_size and row["sha256"] == bundle.sha256_file(path)
    assert row["options"] == {"opset": 17, "dynamic_batch": True}
    parity = row["parity"]
    assert parity["passed"] and parity["top1_agreement"] == 1.0 and parity["max_abs_diff"] <= 1e-4
    counts = manifest["dataset"]["split_counts"]
    assert parity["images"] == sum(counts.values()) and parity["test_images"] == counts["test"]


def test_runtime_matches_keras_on_any_batch_size(built_bundle):
    held = CheckImages(built_bundle)
    pixels, reference = np.concatenate(list(held.batches())), held.reference()
    clf = Classifier.load(built_bundle)
    for batch in (1, 7, len(pixels)):
        np.testing.assert_allclose(clf.predict_pixels(pixels, batch_size=batch), reference, atol=1e-5)


def test_interrupted_reexport_keeps_the_previous_file_and_row(built_bundle, tmp_path, monkeypatch):
    """Killed while checking a re-export: the previous file and row stay, no temporary file is left."""
    copy = shutil.copytree(built_bundle, tmp_path / "b")
    before = bundle.find_export(bundle.read_manifest(copy), "onnx", "float32")
    old_bytes = (copy / before["path"]).read_bytes()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(parity, "check_file", interrupted)  # killed while checking parity
    with pytest.raises(KeyboardInterrupt):
        export_onnx(copy)
    assert sorted(p.name for p in (copy / "exports").iterdir()) == ["model.float32.onnx"]
    assert (copy / before["path"]).read_bytes() == old_bytes
    assert bundle.find_export(bundle.read_manifest(copy), "onnx", "float32") == before
    Classifier.load(copy)  # still loads: the sha256 in graft.json matches the file


def test_moved_dataset_needs_data_flag(built_bundle, dataset, tmp_path):
    copy = shutil.copytree(built_bundle, tmp_path / "b")
    rows = json.loads((copy / "splits.json").read_text())
    for row in rows["samples"]:
        row["file"] = str(tmp_path / "gone" / row["path"])
    (copy / "splits.json").write_text(json.dumps(rows))
    with pytest.raises(ExportError, match="pass --data DATA"):
        export_onnx(copy)
    row = export_onnx(copy, data_root=str(dataset))
    assert row["parity"]["passed"]
