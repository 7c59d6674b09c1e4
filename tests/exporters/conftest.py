"""Shared fixtures for the exporter tests: one tiny bundle per session, exported once.

The bundle is built by `graft build` from generated colour images and a tiny
source .keras model, then exported to every registered format x precision.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

COLOURS = {"red": (200, 40, 40), "green": (40, 190, 60), "blue": (50, 60, 210)}
IMAGE_SIZE = 24


def make_colour_folder(root: Path, per_class: int = 24, seed: int = 0) -> Path:
    """Class folders of noisy solid-colour PNGs (different sizes, so resizing runs)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for label, rgb in COLOURS.items():
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            h, w = rng.integers(20, 48, size=2)
            base = np.array(rgb, np.float32) + rng.normal(0, 25, size=3)
            pixels = base + rng.normal(0, 18, size=(h, w, 3))
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB").save(folder / f"{i:03d}.png")
    return root


def make_source_model(path: Path, size: int = IMAGE_SIZE) -> Path:
    """A tiny convolutional classifier that takes RGB 0..255; its pooled features get cut."""
    import keras

    keras.utils.set_random_seed(1)
    inputs = keras.Input((size, size, 3), name="image")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0)(inputs)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", name="dw2")(x)
    x = keras.layers.BatchNormalization(name="bn2")(x)
    x = keras.layers.ReLU(6.0)(x)
    x = keras.layers.Conv2D(16, 1, strides=2, activation="relu", name="conv3")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(10, activation="softmax", name="old_head")(x)
    model = keras.Model(inputs, outputs, name="tiny_source")
    model.save(path)
    return path


def make_bundle(root: Path, epochs: int = 25) -> Path:
    from graft.builder.train import BuildOptions, build_bundle

    data = make_colour_folder(root / "data")
    source = make_source_model(root / "source.keras")
    out = root / "bundle"
    build_bundle(data, out, BuildOptions(backbone=str(source), epochs=epochs, lr=0.05,
                                         progress=False, cache_dir=str(root / "cache"), seed=0))
    return out


@pytest.fixture(scope="session")
def built_bundle(tmp_path_factory) -> Path:
    """A freshly built bundle (no exports); copy it before changing it."""
    return make_bundle(tmp_path_factory.mktemp("edge"))


def copy_bundle(source: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(source, dest)
    return dest


@pytest.fixture(scope="session")
def exported_bundle(built_bundle, tmp_path_factory) -> Path:
    """The bundle exported once to every registered format x precision (checked against Keras)."""
    from graft.exporters import registry
    from graft.exporters.export import export_bundle
    from graft.exporters.quantize import ExportOptions

    out = copy_bundle(built_bundle, tmp_path_factory.mktemp("exported") / "bundle")
    export_bundle(out, list(registry.TARGETS.values()), ExportOptions(calibration_size=30))
    return out


@pytest.fixture(scope="session")
def held_out(built_bundle):
    """(pixels, labels, Keras probabilities) of the bundle's test split."""
    from graft.exporters import verify

    pixels, y, _ = verify.load_split(built_bundle)
    return pixels, y, verify.keras_probs(built_bundle, pixels)


@pytest.fixture()
def colour_pngs(tmp_path) -> dict:
    """One clean solid-colour PNG per label: {label: path}."""
    from PIL import Image

    paths = {}
    for label, rgb in COLOURS.items():
        paths[label] = tmp_path / f"{label}.png"
        Image.new("RGB", (30, 30), rgb).save(paths[label])
    return paths
