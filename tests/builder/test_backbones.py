"""Every registered backbone builds, and its in-graph normalisation matches Keras' preprocess_input."""

import numpy as np
import pytest

from graft.builder.backbones import REGISTRY, load_backbone

PREPROCESS_MODULE = {
    "mobilenet_v2": "mobilenet_v2", "mobilenet_v3_small": "mobilenet_v3",
    "mobilenet_v3_large": "mobilenet_v3", "efficientnet_b0": "efficientnet",
    "efficientnet_v2_b0": "efficientnet_v2", "resnet50_v2": "resnet_v2", "convnext_tiny": "convnext",
    "vgg16": "vgg16", "vgg19": "vgg19",
}
# Built by graft itself (tests/builder/test_efficientnet_lite.py checks them against a reference).
OWN = {"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"}


def test_every_registered_backbone_has_a_case():
    assert set(REGISTRY) == set(PREPROCESS_MODULE) | OWN


@pytest.mark.parametrize("name", sorted(PREPROCESS_MODULE))
def test_backbone_takes_raw_pixels(name):
    import importlib

    import keras

    backbone = load_backbone(name, weights="none", image_size=32)
    model = backbone.model
    assert model.input.shape[1:] == (32, 32, 3) and model.input.name == "pixels"
    assert model.output.shape[-1] == backbone.info["feature_dim"] and not model.trainable_weights
    base = next(layer for layer in model.layers if isinstance(layer, keras.Model))
    pixels = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    preprocess = importlib.import_module(f"keras.applications.{PREPROCESS_MODULE[name]}").preprocess_input
    expected = base(preprocess(pixels.copy()), training=False)
    np.testing.assert_allclose(model(pixels, training=False), expected, rtol=1e-4, atol=1e-4)
