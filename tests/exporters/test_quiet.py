"""Quiet, readable output: graft's own lines only, plain progress lines when stderr is a file."""

from __future__ import annotations

import os
import subprocess
import sys

TF_NOISE = ("absl::InitializeLog", "oneDNN custom operations", "cudart_stub", "port.cc")


def test_a_build_logged_to_a_file_has_no_tensorflow_lines_and_no_cut_bars(tmp_path, dataset, source_model):
    log = tmp_path / "build.log"
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # as a user's shell
    with open(log, "wb") as out:
        done = subprocess.run([sys.executable, "-m", "graft", "build", str(dataset), "-o", str(tmp_path / "b"),
                               "--backbone", str(source_model), "--epochs", "2", "--cache-dir",
                               str(tmp_path / "cache")], stdout=out, stderr=subprocess.STDOUT, env=env,
                              timeout=300)
    text = log.read_text()
    assert done.returncode == 0, text
    assert not [noise for noise in TF_NOISE if noise in text], text
    assert "━" not in text and "…" not in text  # no bars cut to an unknown width
    lines = text.splitlines()
    assert any(line.startswith("reading: 38/38 done, ") and "img/s" in line for line in lines), text
    assert any(line.startswith("training: 2/2 done, ") and "val_loss" in line for line in lines), text
    assert f"bundle: {tmp_path / 'b'}" in lines


def test_native_output_is_kept_unless_debug():
    code = ("import os; from graft.quiet import native_output\n"
            "with native_output((1, 2)):\n    os.write(1, b'native stdout\\n'); os.write(2, b'native stderr\\n')\n"
            "print('graft line')")
    plain = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert plain.stdout == "graft line\n" and plain.stderr == ""
    debug = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                           env={**os.environ, "GRAFT_DEBUG": "1"})
    assert "native stdout" in debug.stderr and "native stderr" in debug.stderr


def test_what_a_failing_block_printed_is_shown():
    code = ("import os; from graft.quiet import native_output\n"
            "with native_output((2,)):\n    os.write(2, b'why it failed\\n'); raise SystemExit(3)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 3 and "why it failed" in done.stderr


def test_the_tflite_converter_line_stays_out_of_export_output(edge_bundle, tmp_path, capfd):
    from click.testing import CliRunner

    from models import copy_bundle
    from graft.cli import cli

    out = copy_bundle(edge_bundle, tmp_path / "b")
    capfd.readouterr()
    result = CliRunner().invoke(cli, ["export", str(out), "--format", "tflite", "--precision", "int8",
                                      "--calibration-size", "20"])
    native = capfd.readouterr()
    assert "exports/model.int8.tflite" in result.output
    for text in (result.output, native.out, native.err):
        assert "fully_quantize" not in text and "XNNPACK delegate" not in text
