"""The images' helper scripts, without a container engine: the dependency list an image
installs (docker/requirements.py) and the health check's reading of the server's command line."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from container_engine import ROOT


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "docker" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def requirements(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "docker" / "requirements.py"), *args,
                           "--pyproject", str(ROOT / "pyproject.toml")], capture_output=True, text=True)


def names(stdout: str) -> list[str]:
    return [line.split(">")[0].split("<")[0].split(";")[0].split("[")[0] for line in stdout.splitlines()]


def test_the_runtime_layer_has_no_tensorflow():
    done = requirements("serve,litert")
    assert done.returncode == 0, done.stderr
    assert {"onnxruntime", "ai-edge-litert", "uvicorn", "numpy"} <= set(names(done.stdout))
    assert not {"tensorflow", "keras", "tf2onnx", "pyarrow"} & set(names(done.stdout))


def test_swaps_keep_the_version_range_and_nested_extras_resolve():
    done = requirements("all", "--swap", "tensorflow=tensorflow-cpu", "--build-system")
    lines = done.stdout.splitlines()
    tensorflow = [line for line in lines if line.startswith("tensorflow")]
    assert tensorflow == ["tensorflow-cpu>=2.16,<2.22"]
    assert {"ray", "pyspark", "pytest", "matplotlib", "setuptools"} <= set(names(done.stdout))
    assert not any(line.startswith("graft") for line in lines)
    assert len(lines) == len(set(lines))


def test_an_unknown_extra_is_one_line():
    done = requirements("serve,gpu")
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no extra 'gpu' in pyproject.toml; it has build, ")


@pytest.mark.parametrize("argv, address", [
    (["graft", "serve", "/model"], ("127.0.0.1", "8000")),
    (["graft", "serve", "/model", "--host", "0.0.0.0", "--port", "9001"], ("127.0.0.1", "9001")),
    (["graft", "serve", "/model", "--port=9002", "--host=10.1.2.3"], ("10.1.2.3", "9002")),
    (["graft", "serve", "/model", "--host", "::"], ("127.0.0.1", "8000")),
    (["graft", "serve", "/model", "--host", "::1"], ("[::1]", "8000")),
    (["graft", "predict", "/model", "/in"], None),
])
def test_the_health_check_asks_where_serve_listens(argv, address):
    assert load("healthcheck").serve_address(argv) == address
