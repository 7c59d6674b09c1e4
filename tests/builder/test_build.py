import numpy as np
import pytest

from graft import bundle
from graft.builder.backbones import REGISTRY, load_backbone
from graft.builder.build import BuildOptions, build_bundle
from graft.errors import BackboneError, DataError, WeightsError


def options(source_model, cache, **overrides):
    values = dict(backbone=str(source_model), epochs=40, lr=1e-2, progress=False, cache_dir=str(cache))
    values.update(overrides)
    return BuildOptions(**values)


def test_bundle_manifest_records_everything(built_bundle):
    manifest = bundle.read_manifest(built_bundle)
    assert manifest["labels"] == ["blue", "green", "red"]
    assert manifest["input"] == {"name": "pixels", "dtype": "float32", "layout": "NHWC", "channels": 3}
    assert bundle.input_shape(manifest) == [None, 24, 24, 3]
    assert manifest["preprocessing"]["size"] == [24, 24]
    assert manifest["backbone"]["cut_layer"] == "features" and manifest["backbone"]["trainable"] is False
    assert len(manifest["backbone"]["weights"]["sha256"]) == 64
    dataset = manifest["dataset"]
    assert dataset["images"] == 38 and dataset["usable"] == 36
    assert sorted(row["path"] for row in dataset["skipped"]) == ["green/notes.txt", "red/truncated.jpg"]
    assert sum(dataset["split_counts"].values()) == 36
    assert sum(dataset["class_counts"]["red"].values()) == 12
    metrics = manifest["metrics"]
    assert metrics["count"] == dataset["split_counts"]["test"]
    assert np.array(metrics["confusion_matrix"]).sum() == metrics["count"]
    assert set(metrics["per_class"]) == {"blue", "green", "red"}
    assert metrics["accuracy"] >= 0.9  # colours are easy even for random conv features
    assert {"tensorflow", "keras", "numpy"} <= set(manifest["tools"])
    stage = manifest["training"]["stages"][0]
    assert stage["name"] == "head" and stage["epochs_run"] >= 1 and "best_epoch" in stage
    assert set(stage["history"]) >= {"loss", "accuracy", "val_loss", "val_accuracy"}
    test_rows = bundle.split_rows(built_bundle, "test")
    assert len(test_rows) == metrics["count"]
    assert all(r["predicted"] in manifest["labels"] and 0 < r["score"] <= 1 for r in test_rows)
    correct = sum(r["predicted"] == r["label"] for r in test_rows)
    assert correct / len(test_rows) == pytest.approx(metrics["accuracy"], abs=1e-4)
    assert (built_bundle / "model.keras").is_file() and (built_bundle / "splits.json").is_file()


def test_backbone_stays_frozen_and_takes_raw_pixels(built_bundle, source_model):
    import keras

    model = keras.saving.load_model(built_bundle / "model.keras")
    source = keras.saving.load_model(source_model)
    trainable = [w.path for w in model.trainable_weights]
    assert trainable == [] or all("probs" in path for path in trainable)
    # The source model's conv weights are carried unchanged.
    conv = [w for w in model.weights if w.shape == source.get_layer("conv").kernel.shape][0]
    np.testing.assert_array_equal(np.asarray(conv), np.asarray(source.get_layer("conv").kernel))


def test_rebuild_hits_the_feature_cache_and_is_reproducible(tmp_path, dataset, source_model):
    cache = tmp_path / "cache"
    first = build_bundle(dataset, tmp_path / "a", options(source_model, cache, epochs=3))
    second = build_bundle(dataset, tmp_path / "b", options(source_model, cache, epochs=3))
    assert first["dataset"]["feature_cache_hits"] == 0
    assert second["dataset"]["feature_cache_hits"] == 36
    assert first["training"]["stages"][0]["history"]["loss"] == second["training"]["stages"][0]["history"]["loss"]
    assert first["metrics"] == second["metrics"]


def test_existing_output_needs_overwrite(tmp_path, dataset, source_model, built_bundle):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="already exists and is not empty"):
        build_bundle(dataset, out, options(source_model, tmp_path / "c"))
    with pytest.raises(DataError, match="not a graft bundle; refusing"):
        build_bundle(dataset, out, options(source_model, tmp_path / "c", overwrite=True))
    assert (out / "keep.txt").read_text() == "mine"


def test_a_class_with_too_few_usable_images(tmp_path, source_model):
    from models import make_dataset

    data = make_dataset(tmp_path / "d", per_class=6)
    for path in list((data / "blue").iterdir())[1:]:
        path.write_bytes(b"broken")
    with pytest.raises(DataError, match="class 'blue' has 1 usable image"):
        build_bundle(data, tmp_path / "out", options(source_model, tmp_path / "c"))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kwargs,error,message", [
    ({"backbone": "alexnet"}, BackboneError, "unknown backbone 'alexnet'; allowed: efficientnet_lite0, efficientnet_lite1"),
    ({"cut_layer": "nope"}, BackboneError, "no layer named 'nope'"),
    ({"weights": "missing.weights.h5"}, WeightsError, "no such file"),
    ({"weights": "imagenet"}, WeightsError, "brings its own weights"),
])
def test_bad_backbone_inputs(tmp_path, dataset, source_model, kwargs, error, message):
    with pytest.raises(error, match=message):
        build_bundle(dataset, tmp_path / "out", options(source_model, tmp_path / "c", **kwargs))


def test_cut_layer_and_weights_file(tmp_path, source_model):
    import keras

    source = keras.saving.load_model(source_model)
    weights = tmp_path / "other.weights.h5"
    for layer in source.layers:
        for w in layer.weights:
            w.assign(np.ones(w.shape, "float32") * 0.01)
    source.save_weights(weights)
    backbone = load_backbone(str(source_model), weights=str(weights), cut_layer="conv")
    assert backbone.info["cut_layer"] == "conv" and backbone.info["feature_dim"] == 8
    assert backbone.model.output.shape[-1] == 8  # a 4-D cut is pooled
    reference = load_backbone(str(source_model))
    assert backbone.info["weights"]["sha256"] != reference.info["weights"]["sha256"]


def test_registry_covers_the_promised_backbones():
    assert {"mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0",
            "efficientnet_v2_b0", "resnet50_v2", "convnext_tiny"} <= set(REGISTRY)


def test_imagenet_weights_come_from_the_keras_cache():
    """Fill Keras' cache (KERAS_HOME, set in conftest) with a weights file made here; no network."""
    import os

    import h5py
    import keras
    from keras.src.legacy.saving import legacy_h5_format

    reference = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(96, 96, 3),
                                               pooling="avg")
    rng = np.random.default_rng(1)
    reference.set_weights([rng.normal(0, 0.05, w.shape).astype("float32") for w in reference.get_weights()])
    from pathlib import Path

    cached = Path(os.environ["KERAS_HOME"], "models",
                  "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_96_no_top.h5")
    cached.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(cached, "w") as handle:
        legacy_h5_format.save_weights_to_hdf5_group(handle, reference)
    backbone = load_backbone("mobilenet_v2", weights="imagenet", image_size=96)
    from graft.builder.backbones.weights import weights_sha256

    assert backbone.info["weights"] == {"source": "imagenet", "sha256": weights_sha256(reference)}
    assert backbone.info["normalisation"] == {"scale": 1 / 127.5, "offset": -1.0}
    pixels = np.full((1, 96, 96, 3), 127.5, "float32")
    np.testing.assert_allclose(backbone.model.predict(pixels, verbose=0),
                               reference.predict(np.zeros((1, 96, 96, 3), "float32"), verbose=0), atol=1e-5)


def test_imagenet_download_failure_names_the_alternatives(monkeypatch):
    """No cached file (128 px is not in the cache): Keras tries to download; here that fails."""
    from keras.src.utils import file_utils


    def offline(*args, **kwargs):
        raise Exception("URL fetch failure on https://example.invalid/weights.h5: None -- "
                        "[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(file_utils, "get_file", offline)
    with pytest.raises(WeightsError, match=r"could not download.*--weights FILE.*efficientnet_lite0") as caught:
        load_backbone("mobilenet_v2", weights="imagenet", image_size=128)
    assert "--weights none" not in str(caught.value)  # random features are no fix for missing knowledge


def test_source_model_with_a_nested_backbone(tmp_path):
    """A keras.applications backbone inside the source model (a layer of its own) is cut after it."""
    import keras

    base = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(32, 32, 3),
                                          pooling="avg")
    inputs = keras.Input((32, 32, 3))
    features = base(keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs))
    source = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(features))
    source.save(tmp_path / "nested.keras")
    backbone = load_backbone(str(tmp_path / "nested.keras"))
    assert backbone.info["cut_layer"] == base.name and backbone.info["feature_dim"] == 1280
    pixels = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(backbone.model.predict(pixels, verbose=0),
                               base.predict(pixels / 127.5 - 1, verbose=0), atol=1e-5)
