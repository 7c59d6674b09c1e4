"""`graft build --fine-tune N`: the second stage, its records, its exports, its reproducibility."""

from __future__ import annotations

import shutil
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner

from graft import bundle
from graft.builder.backbones.blocks import leaf_layers
from graft.builder.build import BuildOptions, build_bundle
from graft.cli import cli
from graft.runtime.preprocess import load_pixels

# A head that stops short (5 epochs, no floor of optimizer steps) leaves the second stage room to
# improve. The head standardises its inputs, so a small drift of the tiny backbone's features
# moves the head's inputs far: fine-tuning needs a smaller rate than the head's.
TUNE = ["--epochs", "5", "--min-steps", "0", "--lr", "0.05", "--fine-tune", "2", "--fine-tune-lr", "0.001",
        "--fine-tune-epochs", "4"]


def layer_weights(model) -> dict[str, list[np.ndarray]]:
    """Every leaf layer's weights (BatchNorm's moving statistics included), by layer name."""
    return {layer.name: [w.numpy() for w in layer.weights] for layer in leaf_layers(model) if layer.weights}


def load(path):
    import keras

    return keras.saving.load_model(path, compile=False)


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """A source model with named blocks, fine-tuned through the CLI: top 2 blocks, augmented."""
    from models import make_colour_folder
    from tuning_models import make_blocks_model

    root = tmp_path_factory.mktemp("tuned")
    data, source = make_colour_folder(root / "data"), make_blocks_model(root / "source.keras")
    args = [str(data), "--backbone", str(source), "--cache-dir", str(root / "cache"), *TUNE]
    result = CliRunner().invoke(cli, ["build", *args, "-o", str(root / "bundle")])
    assert result.exit_code == 0, result.output
    return SimpleNamespace(root=root, data=data, source=source, out=root / "bundle", args=args,
                           output=result.output, manifest=bundle.read_manifest(root / "bundle"))


def test_frozen_layers_are_bit_identical_and_the_top_blocks_changed(tuned):
    source = layer_weights(load(tuned.source))
    built = layer_weights(load(tuned.out / bundle.KERAS_NAME))
    for name in ("stem_conv", "block1a_dwconv", "block1a_bn"):
        assert all(np.array_equal(a, b) for a, b in zip(source[name], built[name])), name
    for name in ("block2a_conv", "top_conv"):
        assert not np.array_equal(source[name][0], built[name][0]), f"{name} did not train"
    for name in ("block1a_bn", "block2a_bn", "top_bn"):  # gamma, beta, moving mean and variance
        assert len(built[name]) == 4
        assert all(np.array_equal(a, b) for a, b in zip(source[name], built[name])), name


def test_graft_json_keeps_both_stages(tuned):
    manifest = tuned.manifest
    head, stage = manifest["training"]["stages"]
    assert (head["name"], stage["name"]) == ("head", "fine_tune") and "settings" not in head
    settings = stage["settings"]
    assert {k: settings[k] for k in ("blocks", "unit", "family", "available", "lr", "epochs")} == {
        "blocks": 2, "unit": "blocks", "family": "efficientnet", "available": 4, "lr": 0.001, "epochs": 4}
    assert settings["unfrozen_blocks"] == ["block2a", "top"]
    assert settings["unfrozen_layers"] == ["block2a_conv", "top_conv"]
    assert settings["frozen_batchnorm"] == 3
    assert settings["augmentation"]["flip"] is True and settings["augmentation"]["zoom"] == 0.1
    assert stage["kept"] == "fine-tuned" and stage["monitor"] == "val_loss"
    assert 1 <= stage["best_epoch"] <= stage["epochs_run"] <= 4
    assert len(stage["history"]["val_loss"]) == stage["epochs_run"]
    counts = manifest["dataset"]["split_counts"]
    before, after = stage["metrics_before"], stage["metrics_after"]
    for split in ("val", "test"):
        assert before[split]["count"] == after[split]["count"] == counts[split]
    # After: the restored best epoch, computed over pixels; better than the head alone.
    assert after["val"]["loss"] == pytest.approx(min(stage["history"]["val_loss"]), abs=1e-4)
    assert after["val"]["loss"] < before["val"]["loss"]
    assert manifest["metrics"]["accuracy"] == after["test"]["accuracy"]  # the final model's
    assert manifest["backbone"]["fine_tuned_blocks"] == ["block2a", "top"]
    hyper = manifest["training"]["hyperparameters"]
    assert (hyper["fine_tune"], hyper["fine_tune_epochs"], hyper["augment_views"]) == (2, 4, 0)
    line = next(line for line in tuned.output.splitlines() if line.startswith("fine-tuned:"))
    assert line.startswith("fine-tuned: top 2 blocks (block2a, top), ")
    assert f"val accuracy {before['val']['accuracy']:.4f} -> {after['val']['accuracy']:.4f}" in line


def test_test_predictions_come_from_the_fine_tuned_model_over_pixels(tuned):
    model = load(tuned.out / bundle.KERAS_NAME)
    manifest = tuned.manifest
    rows = [row for row in bundle.read_splits(tuned.out)["samples"] if row["split"] == "test"]
    assert len(rows) == manifest["metrics"]["count"] > 0
    pixels = np.stack([load_pixels(tuned.data / row["path"], manifest["preprocessing"]) for row in rows])
    probs = model.predict(pixels.astype(np.float32), verbose=0)
    assert [row["predicted"] for row in rows] == [manifest["labels"][i] for i in probs.argmax(1)]
    np.testing.assert_allclose([row["score"] for row in rows], probs.max(1), atol=1e-5)
    labels = [manifest["labels"].index(row["label"]) for row in rows]
    assert manifest["metrics"]["accuracy"] == round(float((probs.argmax(1) == labels).mean()), 4)


def test_the_same_seed_builds_the_same_model(tuned, tmp_path):
    again = tmp_path / "again"
    result = CliRunner().invoke(cli, ["build", *tuned.args, "-o", str(again)])
    assert result.exit_code == 0, result.output
    first = layer_weights(load(tuned.out / bundle.KERAS_NAME))
    second = layer_weights(load(again / bundle.KERAS_NAME))
    assert first.keys() == second.keys()
    for name in first:
        assert all(np.array_equal(a, b) for a, b in zip(first[name], second[name])), name
    stages = [bundle.read_manifest(path)["training"]["stages"] for path in (tuned.out, again)]
    assert [s["history"] for s in stages[0]] == [s["history"] for s in stages[1]]


def test_a_fine_tuned_bundle_exports_within_the_float32_budget_without_augmentation(tuned, tmp_path):
    import onnx
    from ai_edge_litert.interpreter import Interpreter

    from graft.exporters.export import export_bundle
    from graft.exporters.registry import TARGETS

    out = shutil.copytree(tuned.out, tmp_path / "bundle")
    rows = export_bundle(out, [TARGETS[("onnx", "float32")], TARGETS[("tflite", "float32")]])
    assert [(row["format"], row["precision"]) for row in rows] == [("onnx", "float32"), ("tflite", "float32")]
    for row in rows:
        assert row["status"] == "ok" and row["parity"]["passed"], row
        assert row["parity"]["top1_agreement"] == 1.0 and row["parity"]["max_abs_diff"] <= 1e-4
        assert row["parity"]["test_images"] == tuned.manifest["metrics"]["count"]
        assert row["parity"]["images"] == sum(tuned.manifest["dataset"]["split_counts"].values())
    graph = onnx.load(str(out / "exports" / "model.float32.onnx")).graph
    onnx_names = [f"{node.op_type} {node.name}" for node in graph.node]
    interpreter = Interpreter(model_path=str(out / "exports" / "model.float32.tflite"))
    tflite_names = [op["op_name"] for op in interpreter._get_ops_details()]
    tflite_names += [tensor["name"] for tensor in interpreter.get_tensor_details()]
    for names in (onnx_names, tflite_names):
        assert any("conv" in name.lower() for name in names)  # the names are there to look at
        assert not [n for n in names if "augment" in n.lower() or "random" in n.lower()]


def test_efficientnet_lite0_fine_tunes_its_top_blocks(tmp_path, dataset):
    from graft.builder.backbones import load_backbone

    # A head that has not yet fitted (lr 1e-3, 3 epochs) and the default fine-tuning rate: tuning
    # improves on the head (1e-3 moves the standardised features too far for 6 validation images).
    options = BuildOptions(backbone="efficientnet_lite0", image_size=64, epochs=3, min_steps=0, lr=1e-3,
                           batch_size=16, fine_tune=2, fine_tune_lr=1e-4, fine_tune_epochs=2, progress=False,
                           cache_dir=str(tmp_path / "cache"))
    manifest = build_bundle(dataset, tmp_path / "lite", options)
    stage = manifest["training"]["stages"][1]
    assert stage["settings"]["unfrozen_blocks"] == ["block7a", "top"] and stage["kept"] == "fine-tuned"
    assert stage["settings"]["available"] == 18 and stage["settings"]["frozen_batchnorm"] == 49
    assert stage["settings"]["unfrozen_layers"] == ["block7a_expand_conv", "block7a_dwconv",
                                                    "block7a_project_conv", "top_conv"]
    pretrained = layer_weights(load_backbone("efficientnet_lite0", image_size=64,
                                             cache_dir=tmp_path / "cache").model)
    built = layer_weights(load(tmp_path / "lite" / bundle.KERAS_NAME))
    for name in ("block7a_project_conv", "top_conv"):
        assert not np.array_equal(pretrained[name][0], built[name][0]), name
    frozen = [name for name in pretrained if name not in stage["settings"]["unfrozen_layers"]]
    assert len(frozen) == 98 - 4 and "top_bn" in frozen and "block7a_bn" in frozen
    for name in frozen:
        assert all(np.array_equal(a, b) for a, b in zip(pretrained[name], built[name])), name


def test_fine_tune_beyond_the_backbone_is_refused_in_one_line(tmp_path, source_model, dataset):
    result = CliRunner().invoke(cli, ["build", str(dataset), "-o", str(tmp_path / "b"), "--backbone",
                                      str(source_model), "--fine-tune", "5", "--cache-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1] == (
        "error: --fine-tune 5: source has 1 layer (conv); pass a number from 1 to 1")
    assert not (tmp_path / "b").exists() and not (tmp_path / "features").exists()  # refused first
