"""The runtime, and the CLI commands that only use it, never load TensorFlow."""

import json
import os
import subprocess
import sys

HEAVY = ("tensorflow", "keras", "tf2onnx")


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})


def test_importing_the_runtime_loads_no_tensorflow():
    proc = run_python("import sys, json, graft.runtime, graft.runtime.engines, graft.runtime.inputs, graft.runtime.outputs, graft.runtime.pipeline; "
                      f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []


def test_predict_inspect_and_help_load_no_tensorflow(color_bundle, color_images, tmp_path):
    code = f"""
import sys, json
from click.testing import CliRunner
from graft.cli import cli
runner = CliRunner()
codes = [runner.invoke(cli, args).exit_code for args in (
    ["--help"], ["build", "--help"], ["export", "--help"], ["demo", "--help"],
    ["predict", {str(color_bundle)!r}, {str(color_images['red'])!r}],
    ["inspect", {str(color_bundle)!r}])]
print(json.dumps({{"codes": codes, "heavy": [m for m in {HEAVY!r} if m in sys.modules]}}))
"""
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"codes": [0] * 6, "heavy": []}
