"""Nothing laundered, nothing lost: a looser budget never clears a flag, a failed re-export
keeps the previous good file, two exports of one bundle keep both rows."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest
from click.testing import CliRunner

from models import copy_bundle
from graft import bundle
from graft.cli import cli
from graft.errors import ExportError
from graft.exporters import registry
from graft.exporters.export import export_bundle
from graft.runtime.classifier import Classifier, FlaggedExportWarning


def break_float32_onnx(out):
    """Replace the float32 ONNX export with a model that answers wrongly (sha256 updated)."""
    from models import color_manifest, make_color_onnx

    manifest = bundle.read_manifest(out)
    size = manifest["preprocessing"]["size"][0]
    path = make_color_onnx(out / "exports" / "model.float32.onnx", size, color_manifest(size, manifest["labels"]))
    for row in manifest["exports"]:
        if row["path"] == "exports/model.float32.onnx":
            row.update(sha256=bundle.sha256_file(path), size_bytes=path.stat().st_size)
    bundle.write_manifest(out, manifest)


def test_a_looser_budget_never_clears_a_flag(exported_bundle, tmp_path):
    out = copy_bundle(exported_bundle, tmp_path / "bundle")
    break_float32_onnx(out)
    result = CliRunner().invoke(cli, ["verify", str(out), "--no-speed", "--f32-min-agreement", "0",
                                      "--f32-max-diff", "1"])
    assert result.exit_code == 0, result.output  # the budget asked for holds...
    assert "passes only the looser budget given; it stays flagged" in result.output
    row = bundle.find_export(bundle.read_manifest(out), "onnx", "float32")
    assert row["status"] == "flagged" and "looser budget" in row["flagged"]  # ...but the record says so
    assert row["verification"]["budget"] == {"min_agreement": 0.0, "max_abs_diff": 1.0}
    assert row["verification"]["budget_default"] is False and row["verification"]["default_breaches"]
    inspect = CliRunner().invoke(cli, ["inspect", str(out)])
    assert "FLAGGED (passes only a looser budget)" in inspect.output
    with pytest.warns(FlaggedExportWarning):
        Classifier.load(out, device="cpu")


def test_a_failed_reexport_keeps_the_previous_good_file_and_row(exported_bundle, tmp_path, monkeypatch):
    import graft.exporters.tflite as tflite

    out = copy_bundle(exported_bundle, tmp_path / "bundle")
    before = bundle.find_export(bundle.read_manifest(out), "tflite", "float16")
    data = (out / before["path"]).read_bytes()

    def failing(*args, **kwargs):
        raise ExportError("the TFLite converter could not produce the float16 model: boom")

    monkeypatch.setattr(tflite, "_convert", failing)
    with pytest.raises(ExportError, match="boom"):
        export_bundle(out, [registry.TARGETS[("tflite", "float16")]])
    assert bundle.find_export(bundle.read_manifest(out), "tflite", "float16") == before
    assert (out / before["path"]).read_bytes() == data
    assert not [p.name for p in (out / "exports").iterdir() if p.name.startswith(".")]


def test_a_flagged_reexport_does_not_replace_a_good_file(exported_bundle, tmp_path):
    out = copy_bundle(exported_bundle, tmp_path / "bundle")
    before = bundle.find_export(bundle.read_manifest(out), "onnx", "float16")
    with pytest.raises(Exception, match="break their budget"):
        export_bundle(out, [registry.TARGETS[("onnx", "float16")]], budgets={"float16": {"max_abs_diff": 0.0}})
    assert bundle.find_export(bundle.read_manifest(out), "onnx", "float16") == before


def test_two_processes_updating_one_bundle_keep_both_rows(exported_bundle, tmp_path):
    """One process holds graft.json's lock mid-update; the other waits for it instead of losing a row."""
    out = copy_bundle(exported_bundle, tmp_path / "bundle")
    code = textwrap.dedent(f'''
        from graft import bundle
        bundle.record_export({str(out)!r}, {{"path": "exports/other.onnx", "format": "onnx",
                                             "precision": "float32", "sha256": "b", "size_bytes": 1}})
    ''')
    with bundle.updating(out) as manifest:
        writer = subprocess.Popen([sys.executable, "-c", code])
        time.sleep(2.0)  # it has read graft.json by now, if nothing stops it
        assert writer.poll() is None  # blocked on the lock
        manifest["exports"].append({"path": "exports/mine.onnx", "format": "onnx", "precision": "float16",
                                    "sha256": "a", "size_bytes": 1})
    assert writer.wait(timeout=60) == 0
    paths = {row["path"] for row in bundle.read_manifest(out)["exports"]}
    assert {"exports/mine.onnx", "exports/other.onnx"} <= paths


def test_a_weights_file_path_stays_on_the_build_machine(tmp_path, dataset, source_model):
    """graft.json and the exported files record the weights file's name and sha256, not its path."""
    import keras

    from graft.builder.build import BuildOptions, build_bundle
    from graft.exporters.export import export_onnx

    private = tmp_path / "private" / "folder"
    private.mkdir(parents=True)
    weights = private / "tuned.weights.h5"
    keras.saving.load_model(source_model).save_weights(weights)
    out = tmp_path / "bundle"
    build_bundle(dataset, out, BuildOptions(backbone=str(source_model), weights=str(weights), epochs=3,
                                            progress=False, cache_dir=str(tmp_path / "cache")))
    row = export_onnx(out)
    recorded = bundle.read_manifest(out)["backbone"]["weights"]
    assert recorded["file"] == "tuned.weights.h5" and recorded["file_sha256"] == bundle.sha256_file(weights)
    for path in (out / "graft.json", out / row["path"]):
        assert str(private).encode() not in path.read_bytes()
