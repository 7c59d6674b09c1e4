"""A small real photo classifier for the MediaPipe tests, exported to .tflite with metadata.

The classes are four photos that scikit-image ships (astronaut, cat, coffee, rocket):
a tiny CNN learns which photo a random crop comes from. It takes RGB 0..255 with
its normalisation inside, as graft's models do. No network.
"""

from __future__ import annotations

import functools
import os

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

SIZE = 32
LABELS = ["astronaut", "cat", "coffee", "rocket"]
_CLASS_PHOTOS = {"astronaut": "astronaut", "cat": "chelsea", "coffee": "coffee", "rocket": "rocket"}
_OTHER_PHOTOS = ("hubble_deep_field", "immunohistochemistry", "colorwheel", "retina")
VARIANTS = ("float32", "float16", "dynamic", "int8", "int8-float-output")


def photo(name: str) -> np.ndarray:
    """A photo that scikit-image ships, as uint8 RGB."""
    import skimage.data

    return np.ascontiguousarray(getattr(skimage.data, name)()[..., :3])


def manifest(resize: str = "stretch") -> dict:
    """graft's portable manifest for the classifier."""
    return {"schema_version": 1, "name": "photos", "labels": list(LABELS),
            "input": {"name": "pixels", "shape": [None, SIZE, SIZE, 3], "dtype": "float32"},
            "output": {"name": "probs", "shape": [None, len(LABELS)], "dtype": "float32"},
            "preprocessing": {"size": [SIZE, SIZE], "resize": resize, "interpolation": "bilinear",
                              "channel_order": "RGB", "range": [0, 255]},
            "backbone": {"name": "tiny_cnn", "source": "tests"}}


def random_crops(image: np.ndarray, count: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Crops of 35-100% of the photo's height, aspect 0.7-1.4."""
    height, width, _ = image.shape
    crops = []
    for _ in range(count):
        crop_h = int(rng.uniform(0.35, 1.0) * height)
        crop_w = int(min(width, crop_h * rng.uniform(0.7, 1.4)))
        top, left = rng.integers(0, height - crop_h + 1), rng.integers(0, width - crop_w + 1)
        crops.append(np.ascontiguousarray(image[top:top + crop_h, left:left + crop_w]))
    return crops


def resized(image: np.ndarray) -> np.ndarray:
    """graft's own preprocessing (stretch, bilinear) to the model's size."""
    from graft.runtime.preprocess import load_pixels

    return load_pixels(image, manifest()["preprocessing"])


@functools.cache
def training_set(per_class: int = 120) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    pixels, classes = [], []
    for index, label in enumerate(LABELS):
        for crop in random_crops(photo(_CLASS_PHOTOS[label]), per_class, rng):
            pixels.append(resized(crop))
            classes.append(index)
    pixels = np.stack(pixels).astype(np.float32)
    # Pin the calibrated input range to 0..255, so a uint8 input gets scale 1 and
    # zero-point 0 and stock runtimes may feed raw pixels (two values of one image).
    pixels[0, 0, 0, 0], pixels[0, 0, 0, 1] = 0.0, 255.0
    return pixels, np.asarray(classes)


@functools.cache
def keras_model():
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIZE, SIZE, 3), name="pixels")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0)(inputs)
    x = keras.layers.Conv2D(16, 3, strides=2, activation="relu")(x)
    x = keras.layers.Conv2D(32, 3, strides=2, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(len(LABELS), activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    model.compile(keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy")
    pixels, classes = training_set()
    model.fit(pixels, classes, epochs=15, batch_size=32, verbose=0)
    return model


@functools.cache
def converted(variant: str, pin_range: bool = True) -> bytes:
    """The TFLite converter's bytes for one variant (no metadata yet)."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    model = keras_model()

    @tf.function(input_signature=[tf.TensorSpec((None, SIZE, SIZE, 3), tf.float32, name="pixels")])
    def serve(pixels):
        return {"probs": model(pixels, training=False)}

    frozen = convert_variables_to_constants_v2(serve.get_concrete_function())
    conv = tf.lite.TFLiteConverter.from_concrete_functions([frozen], tf.Module())
    if variant != "float32":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
    if variant == "float16":
        conv.target_spec.supported_types = [tf.float16]
    if variant.startswith("int8"):
        pixels = training_set()[0][::4].copy()
        if not pin_range:
            pixels = np.minimum(pixels, 250.0)
        conv.representative_dataset = lambda: ([pixels[i:i + 1]] for i in range(len(pixels)))
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        io = {"int8": (tf.uint8, tf.uint8), "int8-float-output": (tf.uint8, tf.float32),
              "int8-int8-io": (tf.int8, tf.int8)}[variant]
        conv.inference_input_type, conv.inference_output_type = io
    return bytes(conv.convert())


@functools.cache
def exported(variant: str, resize: str = "stretch") -> bytes:
    """One .tflite file as graft writes it: converter output plus metadata."""
    from graft.exporters.tflite_metadata import add_metadata

    return add_metadata(converted(variant), manifest(resize), {"format": "tflite", "precision": variant})


def sample_images(seed: int = 1) -> list[tuple[str, np.ndarray]]:
    """Real photos (crops of the class photos and of others, whole photos) and generated images."""
    rng = np.random.default_rng(seed)
    images = []
    for label, name in _CLASS_PHOTOS.items():
        images += [(f"{label}-{i}", crop) for i, crop in enumerate(random_crops(photo(name), 8, rng))]
        images.append((f"{label}-whole", photo(name)))
    for name in _OTHER_PHOTOS:
        image = photo(name)[:600, :600]
        images += [(f"{name}-{i}", crop) for i, crop in enumerate(random_crops(image, 3, rng))]
    y, x = np.mgrid[0:90, 0:120]
    gradient = np.stack([x * 2, y * 2, (x + y)], axis=-1).astype(np.uint8)
    images += [("gradient", gradient),
               ("noise", rng.integers(0, 256, size=(70, 50, 3), dtype=np.uint8)),
               ("checker", (((x // 10 + y // 10) % 2) * 255).astype(np.uint8)[..., None].repeat(3, -1)),
               ("orange", np.full((40, 60, 3), (230, 140, 30), np.uint8))]
    return images


def triptychs(side: int = 96) -> list[tuple[str, np.ndarray]]:
    """(label, image): one class photo in the centre, another on both sides (3:1 aspect).

    A centre crop sees the label's photo; a stretched image is two thirds the other.
    """
    from PIL import Image

    def square(name: str) -> np.ndarray:
        image = photo(name)
        height, width, _ = image.shape
        edge = min(height, width)
        top, left = (height - edge) // 2, (width - edge) // 2
        tile = Image.fromarray(image[top:top + edge, left:left + edge])
        return np.asarray(tile.resize((side, side), Image.BILINEAR))

    return [(centre, np.concatenate([square(_CLASS_PHOTOS[side_label]), square(_CLASS_PHOTOS[centre]),
                                     square(_CLASS_PHOTOS[side_label])], axis=1))
            for centre in LABELS for side_label in LABELS if side_label != centre]


def interpreter_scores(data: bytes, pixels: np.ndarray) -> tuple[np.ndarray, float]:
    """LiteRT's probabilities for raw pixels, and the output's quantization step (0 if float)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=data)
    interpreter.allocate_tensors()
    source, target = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    interpreter.set_tensor(source["index"], pixels[None].astype(source["dtype"]))
    interpreter.invoke()
    scores = interpreter.get_tensor(target["index"])[0].astype(np.float32)
    scale, zero_point = target["quantization"]
    return ((scores - zero_point) * scale, scale) if scale else (scores, 0.0)
