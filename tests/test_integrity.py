"""Root causes survive, packaging holds together, and files are written the way the OS says."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from graft.cli import cli
from graft.cli.errors import exit_code, one_line

ROOT = Path(__file__).resolve().parents[1]


def test_debug_shows_the_traceback_with_its_cause(tmp_path):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a protobuf at all")
    image = tmp_path / "a.png"
    image.write_bytes(b"x")
    plain = subprocess.run([sys.executable, "-m", "graft", "predict", str(broken), str(image)],
                           capture_output=True, text=True, timeout=120)
    assert plain.returncode == 2
    assert plain.stderr.strip().splitlines() == [plain.stderr.strip().splitlines()[0]]
    assert plain.stderr.startswith("error: ") and "not a loadable ONNX model" in plain.stderr
    debug = subprocess.run([sys.executable, "-m", "graft", "--debug", "predict", str(broken), str(image)],
                           capture_output=True, text=True, timeout=120)
    assert debug.returncode != 0 and "Traceback (most recent call last)" in debug.stderr
    assert "The above exception was the direct cause" in debug.stderr  # onnxruntime's own error
    assert "graft.errors.BundleError" in debug.stderr


def test_a_missing_extra_and_a_broken_one_say_different_things(monkeypatch):
    import importlib.util

    missing = ModuleNotFoundError("No module named 'ray'", name="ray")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert one_line(missing) == "this command needs ray, which is not installed; pip install 'graft[ray]'"
    demo = ModuleNotFoundError("No module named 'skimage'", name="skimage")  # graft demo's photos
    assert one_line(demo).endswith("pip install 'graft[build]'")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object())
    broken = ImportError("cannot import name 'pywrap' from 'tensorflow.python'", name="tensorflow")
    assert one_line(broken).startswith("tensorflow is installed but failed to import (cannot import name")
    assert "not installed" not in one_line(ModuleNotFoundError("No module named 'h5py'", name="tensorflow"))


def test_a_full_disk_is_exit_1_with_its_cause(monkeypatch, tmp_path, color_onnx, color_images):
    from graft.runtime import writers

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out.csv"))

    monkeypatch.setattr(writers.os, "fsync", full)
    result = CliRunner().invoke(cli, ["predict", str(color_onnx), str(color_images["red"]),
                                      "-o", str(tmp_path / "out.csv")])
    assert result.exit_code == 1
    assert "out.csv: No space left on device" in result.output
    assert exit_code(PermissionError(errno.EACCES, "Permission denied")) == 1
    assert exit_code(FileNotFoundError(errno.ENOENT, "No such file")) == 2


def test_only_a_download_failure_is_called_one(monkeypatch):
    import keras

    from graft.builder.backbones import load_backbone
    from graft.errors import BackboneError

    def refuses(*args, **kwargs):
        raise Exception("the weights file has the wrong shape for this model")

    monkeypatch.setattr(keras.applications, "MobileNetV2", refuses)
    with pytest.raises(BackboneError, match="mobilenet_v2 could not be built") as caught:
        load_backbone("mobilenet_v2", weights="imagenet", image_size=96)
    assert "download" not in str(caught.value) and caught.value.__cause__ is not None


def test_packaging_never_pairs_two_onnxruntimes_and_declares_what_it_imports():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = " ".join(project["dependencies"])
    assert "flatbuffers" in base and "onnxruntime" in base
    for extra, requirements in project["optional-dependencies"].items():
        assert not any(r.startswith("onnxruntime-gpu") for r in requirements), extra
    keras = next(r for r in project["optional-dependencies"]["build"] if r.startswith("keras"))
    assert keras.split(">=")[1].split(",")[0].split()[0] >= "3.14"


def test_two_onnxruntimes_side_by_side_are_named(monkeypatch):
    from graft.errors import DeviceError
    from graft.runtime import onnx_engine

    monkeypatch.setattr(onnx_engine, "onnxruntime_packages", lambda: ["onnxruntime", "onnxruntime-gpu"])
    with pytest.raises(DeviceError, match="onnxruntime and onnxruntime-gpu are installed side by side"):
        onnx_engine.resolve_providers("cuda", ["CUDAExecutionProvider", "CPUExecutionProvider"])
    with pytest.warns(onnx_engine.DeviceFallbackWarning, match="pip uninstall -y onnxruntime onnxruntime-gpu"):
        onnx_engine.resolve_providers("auto", ["CPUExecutionProvider"])
    assert onnx_engine.resolve_providers("cpu", ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]


def test_files_get_the_mode_the_umask_gives_without_touching_it(tmp_path):
    from graft.bundle import atomic_write_bytes

    old = os.umask(0o027)
    try:
        atomic_write_bytes(tmp_path / "a.json", b"{}")
        assert os.umask(0o027) == 0o027  # writing did not change it
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_a_compressed_or_huge_associated_file_is_refused(tmp_path):
    import io
    import zipfile

    from graft.errors import BundleError
    from graft.runtime.tflite_metadata import associated_files

    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("labels.txt", "a\n" * 1000)
    with pytest.raises(BundleError, match="compressed or larger than"):
        associated_files(b"TFL3" + b"\0" * 60 + archive.getvalue(), "bomb.tflite")


@pytest.mark.parametrize("rows, message", [
    ("x", "exports must be a list"),
    ([{"path": "/etc/passwd", "sha256": "a", "format": "onnx"}], "is not a file under exports/"),
    ([{"path": "exports/../../x.onnx", "sha256": "a", "format": "onnx"}], "is not a file under exports/"),
    ([{"path": "exports/model.onnx", "format": "onnx"}], "has no sha256"),
])
def test_export_rows_are_checked_when_graft_json_is_read(color_bundle, tmp_path, rows, message):
    import json
    import shutil

    from graft import bundle
    from graft.errors import BundleError

    copy = shutil.copytree(color_bundle, tmp_path / "b")
    manifest = json.loads((copy / "graft.json").read_text())
    manifest["exports"] = rows
    (copy / "graft.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=message):
        bundle.read_manifest(copy)
    result = CliRunner().invoke(cli, ["inspect", str(copy)])
    assert result.exit_code == 2 and message.split()[0] in result.output


def test_without_an_atomic_exchange_a_crash_between_renames_is_recovered(tmp_path, monkeypatch):
    from graft.bundle import files

    target, new = tmp_path / "bundle", tmp_path / ".bundle.build-1"
    target.mkdir()
    (target / "graft.json").write_text("old")
    new.mkdir()
    (new / "graft.json").write_text("new")
    monkeypatch.setattr(files, "exchange", lambda a, b: False)  # no renameat2 here
    real = os.rename

    def crash_after_moving_aside(src, dst):
        real(src, dst)
        if str(dst).endswith(".old"):
            raise KeyboardInterrupt  # the process dies between the two renames

    monkeypatch.setattr(files.os, "rename", crash_after_moving_aside)
    with pytest.raises(KeyboardInterrupt):
        files.swap_directory(new, target)
    monkeypatch.setattr(files.os, "rename", real)
    assert not target.exists()
    files.recover_directory(target)
    assert (target / "graft.json").read_text() == "old"
    assert not new.exists()  # an unlocked build folder is a leftover: removed


def test_an_int8_input_onnx_model_is_refused_in_one_line(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from graft.errors import BundleError
    from graft.runtime.engines import open_engine

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.INT8, [1, 4, 4, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.INT8, [1, 4, 4, 3])])
    path = tmp_path / "int8.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(BundleError, match="the model's input is tensor\\(int8\\)"):
        open_engine(path, device="cpu")


def test_a_report_that_fails_never_changes_the_exit_code(color_bundle, tmp_path, monkeypatch):
    import shutil

    import graft.report

    copy = shutil.copytree(color_bundle, tmp_path / "b")
    (copy / "report.html").write_text("old report")

    def broken(*args, **kwargs):
        raise ValueError("confusion matrix is not square")

    monkeypatch.setattr(graft.report, "write_report", broken)
    from graft.cli.report import after_change

    after_change(copy)  # no exception
    assert (copy / "report.html").read_text() == "old report"


def test_predict_refuses_options_that_cannot_apply(color_onnx, color_images, tmp_path):
    image = str(color_images["red"])
    artifact = CliRunner().invoke(cli, ["predict", str(color_onnx), image, "--artifact", "tflite:int8"])
    assert artifact.exit_code == 2 and "--artifact picks one export of a bundle" in artifact.output
    both = CliRunner().invoke(cli, ["predict", str(color_onnx), image, "-o", str(tmp_path / "o.csv"),
                                    "--resume", "--overwrite"])
    assert both.exit_code == 2 and "pass one of them" in both.output
