"""The CLI end to end: one-line errors, exit codes, build -> export -> predict -> inspect."""

import csv
import json
import shutil

import pytest
from click.testing import CliRunner

from graft.cli import cli


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_build_export_predict_inspect(tmp_path, dataset, source_model):
    out = tmp_path / "bundle"
    result = invoke("build", dataset, "-o", out, "--backbone", source_model, "--epochs", 30, "--lr", 0.01,
                    "--cache-dir", tmp_path / "cache")
    assert result.exit_code == 0, result.output
    assert "skipped red/truncated.jpg" in result.output and "test accuracy" in result.output
    result = invoke("export", out)
    assert result.exit_code == 0, result.output
    assert "agreement 100.00%" in result.output
    assert (out / "exports" / "model.float32.onnx").is_file()

    for suffix in ("csv", "jsonl"):
        target = tmp_path / f"predictions.{suffix}"
        result = invoke("predict", out, dataset / "red", dataset / "blue" / "000.png", "-o", target,
                        "--top-k", 2)
        assert result.exit_code == 0, result.output
        if suffix == "csv":
            rows = list(csv.DictReader(open(target)))
        else:
            rows = [json.loads(line) for line in open(target)]
        assert len(rows) == 14  # 12 red PNGs + the truncated JPEG + one blue
        bad = [r for r in rows if r["error"]]
        assert len(bad) == 1 and bad[0]["path"].endswith("truncated.jpg")
        good = [r for r in rows if not r["error"]]
        first = (lambda r: r["labels"].split("|")[0]) if suffix == "csv" else (lambda r: r["labels"][0])
        assert sum(first(r) == ("blue" if "blue" in r["path"] else "red") for r in good) >= 12

    result = invoke("inspect", out)
    assert result.exit_code == 0
    assert "labels (3): blue, green, red" in result.output and "ok  agreement 100.00%" in result.output
    (out / "exports" / "model.float32.onnx").write_bytes(b"tampered")
    assert "SHA256 MISMATCH" in invoke("inspect", out).output
    result = invoke("predict", out, dataset / "red" / "000.png")
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert result.output.startswith("error: ") and "does not match" in result.output


@pytest.mark.parametrize("args,message", [
    (["build", "{missing}", "-o", "{tmp}/o"], "no such folder or CSV file"),
    (["build", "{empty}", "-o", "{tmp}/o"], "no class sub-folders"),
    (["build", "{one}", "-o", "{tmp}/o"], "single class"),
    (["build", "{data}", "-o", "{tmp}/o", "--backbone", "vgg99"], "unknown backbone 'vgg99'"),
    (["build", "{data}", "-o", "{tmp}/o", "--backbone", "{src}", "--cut-layer", "nope"], "no layer named 'nope'"),
    (["build", "{data}", "-o", "{tmp}/o", "--backbone", "{src}", "--weights", "{tmp}/w.h5"], "no such file"),
    (["export", "{tmp}"], "not a graft bundle"),
    (["predict", "{tmp}/none.onnx", "x.png"], "no such model file or bundle"),
    (["predict", "{bundle}", "x.png", "--device", "cuda"], "use --device cpu"),
    (["predict", "{bundle}", "x.png", "-o", "{tmp}/out.xlsx"], "unknown output format '.xlsx'"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, dataset, source_model, color_bundle, args, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "one" / "cats").mkdir(parents=True)
    shutil.copy(dataset / "red" / "000.png", tmp_path / "one" / "cats" / "a.png")
    values = {"missing": tmp_path / "missing", "empty": tmp_path / "empty", "one": tmp_path / "one",
              "data": dataset, "src": source_model, "tmp": tmp_path, "bundle": color_bundle}
    result = invoke(*[a.format(**values) for a in args])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and message in result.output
    assert result.output.count("\n") == 1 and "Traceback" not in result.output
    assert not (tmp_path / "o").exists()


def test_usage_errors_exit_2():
    assert invoke("build").exit_code == 2
    assert invoke("predict", "--top-k", 0, "m", "x").exit_code == 2


def test_build_without_a_test_split_and_readable_bundle_files(tmp_path, dataset, source_model):
    import os
    import stat

    out = tmp_path / "bundle"
    result = invoke("build", dataset, "-o", out, "--backbone", source_model, "--epochs", 2,
                    "--test-split", 0, "--cache-dir", tmp_path / "cache")
    assert result.exit_code == 0, result.output
    assert "test accuracy" not in result.output
    assert invoke("inspect", out).exit_code == 0
    umask = os.umask(0)
    os.umask(umask)
    for name in ("graft.json", "model.keras", "splits.json"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o666 & ~umask
