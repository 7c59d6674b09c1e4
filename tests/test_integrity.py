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


def test_ray_actors_use_their_cpu_share():
    from graft.runtime.ray_job import actor_shares

    assert actor_shares(16) == (8, 2)
    assert actor_shares(16, actors=4) == (4, 4)
    assert actor_shares(2) == (1, 2)
    assert actor_shares(3, actors=8) == (8, 1)
