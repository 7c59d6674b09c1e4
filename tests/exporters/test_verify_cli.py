"""`graft verify` and `graft export` through the CLI: the table, the files, budgets and exit codes."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from models import copy_bundle
from graft import bundle
from graft.cli import cli
from graft.errors import CheckFailed


def run(*args):
    return CliRunner().invoke(cli, list(map(str, args)))


@pytest.fixture(scope="module")
def verified(exported_bundle, tmp_path_factory):
    out = copy_bundle(exported_bundle, tmp_path_factory.mktemp("verified") / "bundle")
    result = run("verify", out, "--model-threads", 1)
    return out, result


def test_verify_prints_one_table_and_writes_it(verified):
    out, result = verified
    assert result.exit_code == 0, result.output
    for column in ("format", "precision", "size (MB)", "agreement (n, 95% CI)", "held-out accuracy",
                   "max |Δprob|", "p50 batch-1 (ms)", "batch-32 (img/s)"):
        assert column in result.output
    counts = bundle.read_manifest(out)["dataset"]["split_counts"]
    assert f"Agreement with Keras on {sum(counts.values())} images; accuracy on {counts['test']} test" \
        in result.output
    report = json.loads((out / "verify.json").read_text())
    assert report["passed"] and report["threads"] == 1
    keys = [(r["format"], r["precision"]) for r in report["rows"]]
    assert keys == [("onnx", p) for p in ("float32", "float16", "dynamic", "int8")] + \
                   [("tflite", p) for p in ("float32", "float16", "dynamic", "int8")]
    for row in report["rows"]:
        assert row["passed"] and row["top1_agreement"] >= 0.98
        assert row["p50_ms_batch1"] > 0 and row["throughput_batch32"] > 0
    markdown = (out / "verify.md").read_text()
    assert markdown.count("\n| onnx |") == 4 and markdown.count("\n| tflite |") == 4
    assert "max \\|Δprob\\|" in markdown
    rows = bundle.read_manifest(out)["exports"]
    assert all(r["verification"]["passed"] and r["speed"]["threads"] == 1 for r in rows)


def test_budget_breach_exits_1(verified, tmp_path):
    """A float32 export that disagrees with Keras (a wrong model recorded as the export) fails."""
    from models import color_manifest, make_color_onnx

    out = copy_bundle(verified[0], tmp_path / "bundle")
    manifest = bundle.read_manifest(out)
    size = manifest["preprocessing"]["size"][0]
    wrong = color_manifest(size, manifest["labels"])  # channel order != label order: wrong answers
    path = make_color_onnx(out / "exports" / "model.float32.onnx", size, wrong)
    for row in manifest["exports"]:
        if row["path"] == "exports/model.float32.onnx":
            row.update(sha256=bundle.sha256_file(path), size_bytes=path.stat().st_size)
    bundle.write_manifest(out, manifest)
    result = run("verify", out, "--no-speed")
    assert result.exit_code == 1
    assert "1 of 8 exports break their budget: exports/model.float32.onnx (agreement" in result.output
    report = json.loads((out / "verify.json").read_text())
    assert not report["passed"]
    row = bundle.find_export(bundle.read_manifest(out), "onnx", "float32")
    assert row["status"] == "flagged" and "agreement" in row["flagged"]


def test_budget_flags_tighten_the_check(verified, tmp_path):
    out = copy_bundle(verified[0], tmp_path / "bundle")
    result = run("verify", out, "--no-speed", "--f32-max-diff", "1e-12", "--int8-max-drop", "0")
    assert result.exit_code == 1
    assert "max |dprob|" in result.output and "> 1e-12" in result.output
    report = json.loads((out / "verify.json").read_text())
    float32 = [r for r in report["rows"] if r["precision"] == "float32"]
    assert float32 and all(r["budget"]["max_abs_diff"] == 1e-12 for r in float32)


def test_tampered_export_fails_verify(verified, tmp_path):
    out = copy_bundle(verified[0], tmp_path / "bundle")
    path = out / "exports" / "model.int8.tflite"
    path.write_bytes(path.read_bytes()[:-10])
    result = run("verify", out, "--no-speed")
    assert result.exit_code == 1
    assert "exports/model.int8.tflite (sha256 differs from graft.json" in result.output


def test_verify_without_exports_is_a_usage_error(edge_bundle, tmp_path):
    out = copy_bundle(edge_bundle, tmp_path / "bundle")
    result = run("verify", out)
    assert result.exit_code == 2
    assert "nothing to verify (no exports); run `graft export" in result.output


def test_default_export_writes_checked_float32_onnx(edge_bundle, tmp_path):
    out = copy_bundle(edge_bundle, tmp_path / "bundle")
    result = run("export", out)
    assert result.exit_code == 0, result.output
    row = bundle.find_export(bundle.read_manifest(out), "onnx", "float32")
    assert row["path"] == "exports/model.float32.onnx" and row["parity"]["passed"]
    assert [r["path"] for r in bundle.read_manifest(out)["exports"]] == ["exports/model.float32.onnx"]


def test_failed_export_is_kept_but_flagged(edge_bundle, tmp_path):
    from graft.exporters import registry
    from graft.exporters.export import export_bundle

    out = copy_bundle(edge_bundle, tmp_path / "bundle")
    with pytest.raises(CheckFailed, match=r"exports/model.float16.tflite \(max \|dprob\|"):
        export_bundle(out, [registry.TARGETS[("tflite", "float16")]],
                      budgets={"float16": {"max_abs_diff": 0.0}})
    row = bundle.find_export(bundle.read_manifest(out), "tflite", "float16")
    assert row["status"] == "flagged" and not row["parity"]["passed"]
    assert (out / row["path"]).is_file()
    from graft.runtime.classifier import Classifier, FlaggedExportWarning

    with pytest.warns(FlaggedExportWarning, match="tflite:float16 export is flagged in graft.json"):
        Classifier.load(out, device="cpu", artifact="tflite:float16")
    result = run("inspect", out)
    assert "exports/model.float16.tflite  tflite:float16" in result.output
    assert " ok FLAGGED" in result.output


def test_no_verify_records_unverified(edge_bundle, tmp_path):
    out = copy_bundle(edge_bundle, tmp_path / "bundle")
    result = run("export", out, "--format", "tflite", "--precision", "float16", "--no-verify")
    assert result.exit_code == 0, result.output
    row = bundle.find_export(bundle.read_manifest(out), "tflite", "float16")
    assert row["status"] == "unverified" and "parity" not in row


def test_bad_calibration_method_is_rejected(edge_bundle):
    result = run("export", edge_bundle, "--precision", "int8", "--calibration-method", "kl")
    assert result.exit_code == 2
    assert "'kl' is not one of 'minmax', 'entropy', 'percentile'" in result.output


def test_predict_picks_an_artifact_and_threads(exported_bundle, colour_pngs):
    result = CliRunner().invoke(cli, ["predict", str(exported_bundle), str(colour_pngs["blue"]),
                                      "--artifact", "tflite:int8", "--decode-threads", "1", "--top-k", "1"])
    assert result.exit_code == 0, result.output
    assert f"{colour_pngs['blue']}\tblue " in result.output
