import json
import shutil

import numpy as np
import pytest
from PIL import Image

from graft.errors import BundleError, DeviceError, GraftError, IntegrityError
from graft.runtime import Classifier, Prediction
from graft.runtime.onnx_engine import resolve_providers


def test_bundle_and_single_file_predict_the_colour(color_bundle, color_onnx, color_images):
    for model in (color_bundle, color_onnx):
        clf = Classifier.load(model, device="cpu")
        assert clf.labels == ["red", "green", "blue"] and clf.device == "cpu"
        for label, path in color_images.items():
            top = clf.predict(path, top_k=1)
            assert top[0].label == label and top[0].score > 0.9


def test_predict_accepts_paths_bytes_pil_arrays_and_batches(color_bundle, color_images):
    clf = Classifier.load(color_bundle)
    red = color_images["red"]
    sources = [red, str(red), red.read_bytes(), Image.open(red), np.asarray(Image.open(red))]
    results = clf.predict(sources, top_k=2)
    assert len(results) == len(sources)
    assert all(isinstance(r[0], Prediction) and r[0].label == "red" and len(r) == 2 for r in results)
    batch = np.stack([np.full((16, 16, 3), (0, 0, 230), np.uint8)] * 3)
    assert [r[0].label for r in clf.predict(batch)] == ["blue"] * 3
    assert len(clf.predict(red, top_k=100)) == 3  # k is capped at the number of labels


def test_scores_are_probabilities(color_bundle):
    clf = Classifier.load(color_bundle)
    probs = clf.predict_pixels(np.random.default_rng(0).integers(0, 255, (5, 16, 16, 3)).astype(np.uint8))
    assert probs.shape == (5, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    with pytest.raises(GraftError, match=r"expected pixels shaped \(N, 16, 16, 3\)"):
        clf.predict_pixels(np.zeros((1, 8, 8, 3)))


def test_tampered_export_is_refused(color_bundle, tmp_path):
    copy = shutil.copytree(color_bundle, tmp_path / "b")
    model = copy / "exports" / "model.onnx"
    data = bytearray(model.read_bytes())
    data[-1] ^= 0xFF
    model.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="does not match"):
        Classifier.load(copy)


def test_truncated_single_file_is_refused(color_onnx, tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(color_onnx.read_bytes()[:100])
    with pytest.raises(BundleError, match="not a loadable ONNX model"):
        Classifier.load(bad)


def test_missing_things_are_clear(color_bundle, tmp_path):
    with pytest.raises(BundleError, match="no such model file or bundle"):
        Classifier.load(tmp_path / "nowhere")
    with pytest.raises(BundleError, match="not a graft bundle"):
        Classifier.load(tmp_path)
    with pytest.raises(BundleError, match="no tflite:int8 export"):
        Classifier.load(color_bundle, artifact="tflite:int8")
    (tmp_path / "model.pt").write_bytes(b"x")
    with pytest.raises(BundleError, match="unknown model format '.pt'"):
        Classifier.load(tmp_path / "model.pt")


def test_bundle_with_newer_schema_is_refused(color_bundle, tmp_path):
    copy = shutil.copytree(color_bundle, tmp_path / "b")
    manifest = json.loads((copy / "graft.json").read_text())
    manifest["schema_version"] = 99
    (copy / "graft.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="newer than this graft understands"):
        Classifier.load(copy)


def test_device_mapping():
    cpu_only = ["CPUExecutionProvider"]
    assert resolve_providers("auto", cpu_only) == cpu_only
    assert resolve_providers("auto", ["CUDAExecutionProvider", *cpu_only]) == ["CUDAExecutionProvider", *cpu_only]
    assert resolve_providers("tensorrt", ["TensorrtExecutionProvider", "CUDAExecutionProvider", *cpu_only])[0] \
        == "TensorrtExecutionProvider"
    for device in ("cuda", "tensorrt", "openvino"):
        with pytest.raises(DeviceError, match="use --device cpu"):
            resolve_providers(device, cpu_only)
    with pytest.raises(DeviceError, match="unknown device 'tpu'"):
        resolve_providers("tpu", cpu_only)


def test_named_gpu_without_provider_is_an_error(color_bundle):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this machine has CUDA")
    with pytest.raises(DeviceError, match="'cuda' needs CUDAExecutionProvider"):
        Classifier.load(color_bundle, device="cuda")
