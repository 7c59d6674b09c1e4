"""LiteRT engine details: quantized I/O scaling, threads, damaged files, no TensorFlow at runtime."""

from __future__ import annotations

import subprocess
import sys
import threading

import numpy as np
import pytest

from models import copy_bundle
from graft import bundle
from graft.errors import BundleError, DeviceError, IntegrityError
from graft.exporters import registry
from graft.runtime.classifier import Classifier
from graft.runtime.engines import open_engine


def test_quantize_and_dequantize_use_scale_and_zero_point():
    from graft.runtime.litert import dequantize, quantize

    detail = {"dtype": np.int8, "quantization": (0.5, -10)}
    q = quantize(np.array([0.0, 1.0, 300.0, -300.0], np.float32), detail)
    assert q.dtype == np.int8 and q.tolist() == [-10, -8, 127, -128]
    out = dequantize(np.array([-10, -8, 127], np.int8), detail)
    assert out.dtype == np.float32 and out.tolist() == [0.0, 1.0, 68.5]
    u8 = {"dtype": np.uint8, "quantization": (1.0, 0)}
    assert quantize(np.array([0, 255, 17], np.uint8), u8).tolist() == [0, 255, 17]


@pytest.fixture(scope="module")
def integer_io_bundle(edge_bundle, tmp_path_factory):
    """The tiny bundle exported as full-integer TFLite with int8 and with uint8 I/O."""
    from graft.exporters.context import Context
    from graft.exporters.export import produce
    from graft.exporters.options import ExportOptions

    out = copy_bundle(edge_bundle, tmp_path_factory.mktemp("intio") / "bundle")
    files = {}
    for io_dtype in ("int8", "uint8"):
        ctx = Context(out, ExportOptions(calibration_size=30, io_dtype=io_dtype))
        try:
            candidate = produce(ctx, registry.TARGETS[("tflite", "int8")], None)
        finally:
            ctx.close()
        path = out / "exports" / f"io-{io_dtype}.tflite"
        candidate.path.rename(path)
        files[io_dtype] = path
    return files


@pytest.mark.parametrize("io_dtype", ["int8", "uint8"])
def test_integer_io_is_scaled_for_the_caller(integer_io_bundle, held_out, io_dtype):
    pixels, _, reference = held_out
    engine = open_engine(integer_io_bundle[io_dtype], device="cpu")
    assert str(engine.input_dtype) == io_dtype
    assert engine.input["dtype"] == np.dtype(io_dtype) and engine.output["dtype"] == np.dtype(io_dtype)
    export = engine.manifest["export"]
    assert export["io_dtype"] == io_dtype and export["input"]["dtype"] == io_dtype
    scale, zero_point = engine.input["quantization"]
    assert export["input"]["scale"] == pytest.approx(scale) and export["input"]["zero_point"] == zero_point
    for feed in (pixels, pixels.astype(np.float32)):  # callers pass uint8 or float pixels
        probs = engine.run(feed)
        assert probs.dtype == np.float32
        assert np.abs(probs - reference).max() < 0.05
        assert (probs.argmax(1) == reference.argmax(1)).all()


def test_one_interpreter_per_thread(exported_bundle, held_out):
    pixels, _, _ = held_out
    engine = open_engine(exported_bundle / "exports" / "model.float32.tflite", device="cpu", threads=1)
    expected = engine.run(pixels)
    results, interpreters, errors = {}, {}, []

    def work(i):
        try:
            for _ in range(5):
                results[i] = engine.run(pixels[: 3 + i])
            interpreters[i] = engine._interpreter()  # held, so no id is reused after a thread ends
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len({id(it) for it in interpreters.values()}) == 4
    for i, probs in results.items():
        np.testing.assert_allclose(probs, expected[: 3 + i], atol=1e-5)


def test_litert_refuses_gpu_devices(exported_bundle):
    with pytest.raises(DeviceError, match="device 'cuda' is not available for .tflite models"):
        open_engine(exported_bundle / "exports" / "model.float32.tflite", device="cuda")


@pytest.mark.parametrize("name", ["model.float32.tflite", "model.int8.tflite", "model.float32.onnx",
                                  "model.int8.onnx"])
def test_truncated_file_is_refused(exported_bundle, tmp_path, name):
    data = (exported_bundle / "exports" / name).read_bytes()
    bad = tmp_path / name
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(BundleError, match=f"{bad.name}: (not a loadable|the TFLite metadata)"):
        Classifier.load(bad, device="cpu")


@pytest.mark.parametrize("key", ["tflite:int8", "onnx:float16"])
def test_tampered_file_in_bundle_is_refused(exported_bundle, tmp_path, key):
    out = copy_bundle(exported_bundle, tmp_path / "bundle")
    row = bundle.find_export(bundle.read_manifest(out), *key.split(":"))
    path = out / row["path"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="does not match the .* recorded in graft.json"):
        Classifier.load(out, device="cpu", artifact=key)


def test_runtime_reads_tflite_without_tensorflow(exported_bundle, colour_pngs):
    code = (
        "import sys\n"
        "from graft.runtime.classifier import Classifier\n"
        f"clf = Classifier.load({str(exported_bundle)!r}, device='cpu', artifact='tflite:int8', model_threads=1)\n"
        f"print(clf.predict({str(colour_pngs['green'])!r}, top_k=1)[0].label)\n"
        "heavy = [m for m in ('tensorflow', 'keras', 'tf2onnx') if m in sys.modules]\n"
        "print('heavy:', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[:2] == ["green", "heavy: []"]


def test_metadata_reader_agrees_with_the_tflite_schema(exported_bundle):
    from ai_edge_litert import schema_py_generated as schema

    from graft.runtime.tflite_metadata import metadata_buffers

    data = (exported_bundle / "exports" / "model.dynamic.tflite").read_bytes()
    model = schema.Model.GetRootAs(data, 0)
    names = [model.Metadata(i).Name().decode() for i in range(model.MetadataLength())]
    assert "graft.manifest" in names and "min_runtime_version" in names
    for i, name in enumerate(names):
        expected = model.Buffers(model.Metadata(i).Buffer()).DataAsNumpy().tobytes()
        assert metadata_buffers(data, "model.tflite")[name] == expected
    assert "absent" not in metadata_buffers(data, "model.tflite")
    with pytest.raises(BundleError, match="the TFLite metadata cannot be read"):
        metadata_buffers(data[:200], "cut.tflite")
