"""Tiny models and datasets for tests. No network.

- ``make_color_onnx`` writes a real ONNX classifier of an image's dominant colour
  without TensorFlow (mean over the pixels, a linear layer, softmax): red images
  come out "red", so runtime, server and batch tests assert predictions.
- ``make_dataset`` / ``make_colour_folder``: class folders of noisy solid-colour PNGs.
- ``make_source_model`` / ``make_conv_source_model``: tiny saved Keras models taking RGB 0..255.
- ``make_bundle``: a bundle built by graft's own builder (the exporter tests' fixture).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from graft import bundle

LABELS = ["red", "green", "blue"]


def color_manifest(size: int = 16, labels: list[str] = LABELS) -> dict:
    return {
        "schema_version": bundle.SCHEMA_VERSION,
        "name": "colors",
        "created": "2026-01-01T00:00:00+00:00",
        "labels": list(labels),
        "input": {"name": "pixels", "shape": [None, size, size, 3], "dtype": "float32", "layout": "NHWC"},
        "output": {"name": "probs", "shape": [None, len(labels)], "dtype": "float32"},
        "preprocessing": bundle.preprocessing_contract(size, size),
        "backbone": {"name": "mean-colour"},
    }


def make_color_onnx(path: str | Path, size: int = 16, manifest: dict | None = None,
                    fixed_batch: int | None = None) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    manifest = manifest or color_manifest(size)
    classes = len(manifest["labels"])
    weight = np.zeros((3, classes), np.float32)
    for i in range(min(3, classes)):
        weight[i, i] = 0.02  # a channel mean of 220 vs 20 gives p ~ 0.97: sharp, not saturated
    bias = np.zeros(classes, np.float32)
    batch = fixed_batch or "N"
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["pixels", "axes"], ["mean"], keepdims=0),
            helper.make_node("MatMul", ["mean", "W"], ["logits0"]),
            helper.make_node("Add", ["logits0", "B"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
        ],
        "colors",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, [batch, size, size, 3])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [batch, classes])],
        initializer=[numpy_helper.from_array(np.array([1, 2], np.int64), "axes"),
                     numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.helper.set_model_props(model, {bundle.METADATA_KEY: json.dumps(bundle.portable_manifest(manifest))})
    onnx.checker.check_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def make_color_bundle(directory: str | Path, size: int = 16) -> Path:
    """A bundle directory with graft.json and exports/model.onnx (no model.keras)."""
    directory = Path(directory)
    manifest = color_manifest(size)
    onnx_path = make_color_onnx(directory / "exports" / "model.onnx", size, manifest)
    manifest["exports"] = [{
        "path": "exports/model.onnx", "format": "onnx", "precision": "float32",
        "size_bytes": onnx_path.stat().st_size, "sha256": bundle.sha256_file(onnx_path),
        "options": {"opset": 18},
    }]
    bundle.write_manifest(directory, manifest)
    return directory


def solid_image(path: str | Path, color: str, size: tuple[int, int] = (40, 30), fmt: str | None = None) -> Path:
    from PIL import Image

    rgb = {"red": (220, 20, 20), "green": (20, 220, 20), "blue": (20, 20, 220)}[color]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, rgb).save(path, format=fmt)
    return path


COLORS = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200)}


def make_dataset(root: str | Path, per_class: int = 12, size: tuple[int, int] = (40, 48),
                 seed: int = 0, classes: dict = COLORS) -> Path:
    """Class folders of noisy solid-colour PNGs: easy enough for a tiny backbone to learn."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    root = Path(root)
    for name, rgb in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            noise = rng.normal(0, 30, (size[0], size[1], 3))
            pixels = np.clip(np.array(rgb) + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i:03d}.png")
    return root


def make_source_model(path: str | Path, size: int = 24, seed: int = 0) -> Path:
    """A tiny saved Keras model taking RGB 0..255, with a pooled 'features' layer."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((size, size, 3), name="image")
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(8, 3, activation="relu", name="conv")(x)
    x = keras.layers.GlobalAveragePooling2D(name="features")(x)
    outputs = keras.layers.Dense(4, activation="softmax", name="old_head")(x)
    path = Path(path)
    keras.Model(inputs, outputs).save(path)
    return path


# Exporter tests: varied image sizes and a conv/depthwise/batch-norm source ---------
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


def make_conv_source_model(path: Path, size: int = IMAGE_SIZE) -> Path:
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
    source = make_conv_source_model(root / "source.keras")
    out = root / "bundle"
    build_bundle(data, out, BuildOptions(backbone=str(source), epochs=epochs, lr=0.05,
                                         progress=False, cache_dir=str(root / "cache"), seed=0))
    return out


def copy_bundle(source: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(source, dest)
    return dest
