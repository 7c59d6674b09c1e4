"""The right artifact by default: the best verified export, never a flagged one silently; every core."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from models import copy_bundle
from graft import bundle
from graft.bundle.choice import choose_export
from graft.cli import cli
from graft.errors import BundleError


def row(fmt, precision, status="ok"):
    return {"format": fmt, "precision": precision, "status": status,
            "path": f"exports/model.{precision}.{'onnx' if fmt == 'onnx' else 'tflite'}"}


def test_choice_follows_the_documented_order_and_skips_flagged_files():
    manifest = {"exports": [row("tflite", "float32"), row("onnx", "int8"), row("onnx", "float32", "flagged")]}
    choice = choose_export(manifest)
    assert choice.key == "onnx:int8" and "passed over: onnx:float32" in choice.reason
    assert choose_export(manifest, runnable=("onnx",)).key == "onnx:int8"
    only_tflite = {"exports": [row("tflite", "int8"), row("tflite", "float16")]}
    assert choose_export(only_tflite).key == "tflite:int8"
    with pytest.raises(BundleError, match=r"tflite needs a runtime that is not installed"):
        choose_export(only_tflite, runnable=("onnx",))
    unverified = {"exports": [row("onnx", "float16", "unverified"), row("onnx", "int8", "flagged")]}
    choice = choose_export(unverified)
    assert choice.key == "onnx:float16" and "NOT verified" in choice.reason
    with pytest.raises(BundleError, match=r"a flagged file runs only when named with --artifact"):
        choose_export({"exports": [row("onnx", "int8", "flagged")]})
    assert choose_export({"exports": [row("onnx", "int8", "flagged")]}, "onnx:int8").key == "onnx:int8"


@pytest.fixture(scope="module")
def int8_only(exported_bundle, tmp_path_factory):
    """The exported bundle with every export but the int8 ones removed."""
    out = copy_bundle(exported_bundle, tmp_path_factory.mktemp("int8") / "bundle")
    manifest = bundle.read_manifest(out)
    for r in manifest["exports"]:
        if r["precision"] != "int8":
            (out / r["path"]).unlink()
    manifest["exports"] = [r for r in manifest["exports"] if r["precision"] == "int8"]
    bundle.write_manifest(out, manifest)
    return out


def test_a_bundle_of_int8_exports_predicts_and_serves_by_default(int8_only, colour_pngs):
    from graft.runtime.classifier import Classifier
    from graft.runtime.server import ServerConfig, load_repository

    result = CliRunner().invoke(cli, ["predict", str(int8_only), str(colour_pngs["red"])])
    assert result.exit_code == 0, result.output
    assert "model: exports/model.int8.onnx (onnx:int8: the best verified export)" in result.output
    assert "\tred " in result.output
    assert Classifier.load(int8_only).artifact == "onnx:int8"
    repository = load_repository(int8_only, ServerConfig())
    assert [e.classifier.artifact for e in repository.entries()] == ["onnx:int8"]
    chosen = load_repository(int8_only, ServerConfig(artifacts=("tflite:int8",)))
    assert chosen.entries()[0].classifier.engine.format == "tflite"


def test_an_artifact_that_is_not_there_lists_the_exports(int8_only, colour_pngs):
    result = CliRunner().invoke(cli, ["predict", str(int8_only), str(colour_pngs["red"]),
                                      "--artifact", "onnx:float16"])
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert "--artifact onnx:float16: no onnx:float16 export; exports: onnx:int8 (ok), tflite:int8 (ok)" \
        in result.output
    from graft.runtime.server import ServerConfig, load_repository

    with pytest.raises(BundleError, match=r"no model named 'other'; models: "):
        load_repository(int8_only, ServerConfig(artifacts=("other=onnx:int8",)))


def test_serve_takes_artifact_per_model_in_a_repository(int8_only, tmp_path):
    import shutil

    from graft.runtime.server import ServerConfig, load_repository

    for name in ("a", "b"):
        shutil.copytree(int8_only, tmp_path / "repo" / name / "1")
    repository = load_repository(tmp_path / "repo", ServerConfig(artifacts=("b=tflite:int8",)))
    formats = {e.name: e.classifier.artifact for e in repository.entries()}
    assert formats == {"a": "onnx:int8", "b": "tflite:int8"}


def test_engines_use_every_allowed_core_by_default(exported_bundle):
    from graft.runtime.engines import allowed_cores, open_engine

    for name in ("model.int8.tflite", "model.float32.onnx"):
        engine = open_engine(exported_bundle / "exports" / name, device="cpu")
        assert engine.threads == allowed_cores()
        assert open_engine(exported_bundle / "exports" / name, device="cpu", threads=1).threads == 1
    onnx = open_engine(exported_bundle / "exports" / "model.float32.onnx", device="cpu")
    assert onnx.session.get_session_options().intra_op_num_threads == allowed_cores()
