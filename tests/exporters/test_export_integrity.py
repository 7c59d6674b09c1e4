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
    chosen = Classifier.load(out, device="cpu")  # by default a flagged file is passed over...
    assert chosen.artifact != "onnx:float32" and "passed over: onnx:float32" in chosen.choice
    with pytest.warns(FlaggedExportWarning):  # ...and named, it runs with a warning
        Classifier.load(out, device="cpu", artifact="onnx:float32")


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
        import fcntl
        from graft import bundle
        real = fcntl.flock
        def flock(fd, op):
            print("waiting", flush=True)  # about to take the lock: from here it must block
            return real(fd, op)
        fcntl.flock = flock
        bundle.record_export({str(out)!r}, {{"path": "exports/other.onnx", "format": "onnx",
                                             "precision": "float32", "sha256": "b", "size_bytes": 1}})
    ''')
    with bundle.updating(out) as manifest:
        writer = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        assert writer.stdout.readline().strip() == "waiting"  # it reached the lock...
        time.sleep(0.5)
        assert writer.poll() is None  # ...and waits there
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


def test_a_row_that_cannot_be_written_puts_the_previous_file_back(exported_bundle, tmp_path, monkeypatch):
    out = copy_bundle(exported_bundle, tmp_path / "bundle")
    before = bundle.find_export(bundle.read_manifest(out), "onnx", "float32")
    data = (out / before["path"]).read_bytes()

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(bundle, "write_manifest", full)
    with pytest.raises(OSError, match="No space left"):
        export_bundle(out, [registry.TARGETS[("onnx", "float32")]], verify_exports=False)
    monkeypatch.undo()
    assert (out / before["path"]).read_bytes() == data
    assert bundle.find_export(bundle.read_manifest(out), "onnx", "float32") == before
    assert sorted(p.name for p in (out / "exports").iterdir() if p.name.startswith(".")) == []


def test_the_next_export_cleans_up_after_a_killed_one(exported_bundle, tmp_path):
    from graft.exporters.install import sweep

    out = copy_bundle(exported_bundle, tmp_path / "bundle")
    row = bundle.find_export(bundle.read_manifest(out), "onnx", "float16")
    final = out / row["path"]
    good = final.read_bytes()
    # killed after its replacement took the name, before the row was written:
    (out / "exports" / ".model.float16.onnx.previous").write_bytes(good)
    final.write_bytes(b"the replacement that never got its row")
    dead = out / "exports" / ".model.int8.onnx.999999999-0badf00d.onnx"  # a dead process's candidate
    dead.write_bytes(b"half written")
    sweep(out)
    assert final.read_bytes() == good and not dead.exists()
    assert not [p for p in (out / "exports").iterdir() if p.name.startswith(".")]


def test_verify_records_nothing_for_a_file_replaced_meanwhile(exported_bundle, tmp_path):
    from graft.exporters.verify import _record

    out = copy_bundle(exported_bundle, tmp_path / "bundle")
    row = bundle.find_export(bundle.read_manifest(out), "onnx", "int8")
    stale = {"path": row["path"], "sha256": "0" * 64, "accuracy": 0.1, "accuracy_drop": 0.9,
             "top1_agreement": 0.1, "max_abs_diff": 1.0, "images": 3, "passed": False, "breaches": ["x"],
             "budget": {}, "budget_default": True, "default_breaches": ["x"], "status": "flagged",
             "flagged": "stale"}
    _record(out, [stale])
    assert bundle.find_export(bundle.read_manifest(out), "onnx", "int8") == row


@pytest.mark.parametrize("options, message", [
    (dict(calibration_size=50), "--calibration-size applies to int8 exports only"),
    (dict(exclude_nodes=["tflite:conv"]), "--exclude-nodes tflite:conv: no tflite int8 export"),
    (dict(io_dtype="int8"), "--io-dtype int8 applies to TFLite int8 only"),
    (dict(calibration_method="entropy"), "--calibration-method entropy applies to ONNX int8 only"),
])
def test_options_no_target_uses_are_refused(options, message):
    from graft.errors import GraftError
    from graft.exporters.options import ExportOptions

    with pytest.raises(GraftError, match=message):
        ExportOptions(**options).check_for([registry.TARGETS[("onnx", "float32")], registry.TARGETS[("onnx", "int8")]]
                                           if "tflite" in str(options) or "io_dtype" in options else
                                           [registry.TARGETS[("tflite", "float32")]])


def test_an_export_of_a_rebuilt_bundle_is_not_installed(exported_bundle, tmp_path):
    from graft.exporters.context import Context
    from graft.exporters.export import produce
    from graft.exporters.install import install
    from graft.exporters.options import ExportOptions

    out = copy_bundle(exported_bundle, tmp_path / "bundle")
    ctx = Context(out, ExportOptions())
    try:
        candidate = produce(ctx, registry.TARGETS[("onnx", "float32")], None)
    finally:
        ctx.close()
    manifest = bundle.read_manifest(out)
    manifest["created"] = "2030-01-01T00:00:00+00:00"  # as if `graft build --overwrite` ran meanwhile
    bundle.write_manifest(out, manifest)
    with pytest.raises(ExportError, match="the bundle was rebuilt while this export ran"):
        install(out, candidate, print, bundle.build_id(ctx.manifest))
    candidate.discard()
    assert bundle.read_manifest(out)["exports"] == manifest["exports"]
