"""keras.applications backbones: ImageNet weights through Keras' own download and cache."""

from __future__ import annotations

from graft.builder.backbones.registry import OFFLINE
from graft.builder.backbones.weights import load_weights_file, weights_sha256
from graft.bundle import sha256_file
from graft.errors import BackboneError, WeightsError, first_line


def build(name: str, spec, weights: str, image_size: int | None, cache_dir=None):
    """A frozen keras.applications model with its normalisation in the graph, pooled to (N, D)."""
    import keras

    from graft.builder.backbones import Backbone

    size = image_size or spec.size
    constructor = getattr(keras.applications, spec.application)
    keras_weights = "imagenet" if weights == "imagenet" else None
    try:
        base = constructor(include_top=False, weights=keras_weights, input_shape=(size, size, 3),
                           pooling="avg", **spec.kwargs)
    except ValueError as exc:
        raise BackboneError(f"{name} cannot be built at {size}x{size}: {exc}") from None
    except Exception as exc:  # Keras' get_file raises a bare Exception on a failed download
        if weights == "imagenet" and _is_download_failure(exc):
            raise WeightsError(f"could not download the ImageNet weights for {name} ({exc}); "
                               "pass a local copy with --weights FILE, or use a backbone whose "
                               f"weights install with graft ({', '.join(OFFLINE)})") from exc
        raise BackboneError(f"{name} could not be built ({first_line(exc, 200)})") from exc
    if weights not in ("imagenet", "none"):
        load_weights_file(base, weights)
    inputs = keras.Input((size, size, 3), name="pixels")
    x = normalise(spec, inputs) if spec.scale is not None or spec.bgr_means else inputs
    features = base(x, training=False)
    model = keras.Model(inputs, features, name=f"{name}_features")
    model.trainable = False
    info = {"name": name, "source": f"keras.applications.{spec.application}",
            "cut_layer": None, "feature_dim": int(features.shape[-1]),
            "normalisation": _describe(spec),
            "weights": {"source": weights if weights in ("imagenet", "none") else "file",
                        "sha256": weights_sha256(base)}}
    if weights not in ("imagenet", "none"):
        info["weights"].update(file=_name(weights), file_sha256=sha256_file(weights))
    architecture = f"{spec.application}:{_describe(spec)}:{sorted(spec.kwargs.items())}"
    return Backbone(model, info, size, architecture)


def _is_download_failure(exc: Exception) -> bool:
    """Keras' get_file wraps network errors in 'URL fetch failure' / an Exception naming the URL."""
    text = str(exc)
    return any(marker in text for marker in ("URL fetch failure", "http://", "https://",
                                             "Name or service not known", "urlopen"))


def _name(path: str) -> str:
    from pathlib import Path

    return Path(path).name


def normalise(spec, inputs):
    """The backbone's preprocess_input as a frozen layer named ``normalise``, applied to ``inputs``.

    A Rescaling for (x * scale + offset); for the "caffe" mode (VGG), a fixed
    1x1 convolution that swaps RGB to BGR and subtracts the channel means, which
    every exporter converts exactly.
    """
    import keras
    import numpy as np

    if spec.bgr_means is None:
        return keras.layers.Rescaling(spec.scale, offset=spec.offset, name="normalise")(inputs)
    layer = keras.layers.Conv2D(3, 1, name="normalise", trainable=False)
    outputs = layer(inputs)
    swap = np.zeros((1, 1, 3, 3), np.float32)
    for out_channel, in_channel in enumerate((2, 1, 0)):
        swap[0, 0, in_channel, out_channel] = 1.0
    layer.set_weights([swap, -np.array(spec.bgr_means, np.float32)])
    return outputs


def _describe(spec) -> dict | str:
    if spec.bgr_means is not None:
        return {"channels": "RGB to BGR", "subtract": list(spec.bgr_means)}
    if spec.scale is not None:
        return {"scale": spec.scale, "offset": spec.offset}
    return "inside the model"
