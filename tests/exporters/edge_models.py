"""Tiny data for the exporter tests: generated colour images, a tiny source .keras model,
a bundle built from them by `graft build`. No network."""

from __future__ import annotations

from pathlib import Path

import numpy as np

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
    from graft.builder.build import BuildOptions, build_bundle

    data = make_colour_folder(root / "data")
    source = make_source_model(root / "source.keras")
    out = root / "bundle"
    build_bundle(data, out, BuildOptions(backbone=str(source), epochs=epochs, lr=0.05,
                                         progress=False, cache_dir=str(root / "cache"), seed=0))
    return out


def copy_bundle(source: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(source, dest)
    return dest
