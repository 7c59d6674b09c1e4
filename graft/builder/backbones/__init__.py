"""Backbones: a registry of keras.applications specs, or any saved Keras model cut at a layer.

Every feature extractor built here takes RGB pixels in 0..255 named ``pixels``;
a backbone's own normalisation is a layer inside the graph, so exported models
need nothing from their callers but pixels.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from graft.errors import BackboneError, WeightsError, first_line


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one keras.applications backbone and feed it 0..255 pixels."""

    application: str                 # attribute of keras.applications
    size: int = 224                  # native input size
    scale: float | None = None       # Rescaling(scale, offset) in the graph; None: the model
    offset: float = 0.0              # normalises internally (include_preprocessing)
    kwargs: dict = field(default_factory=dict)


# Normalisation per backbone follows each application's preprocess_input.
REGISTRY: dict[str, BackboneSpec] = {
    "mobilenet_v2": BackboneSpec("MobileNetV2", scale=1 / 127.5, offset=-1.0),
    "mobilenet_v3_small": BackboneSpec("MobileNetV3Small"),
    "mobilenet_v3_large": BackboneSpec("MobileNetV3Large"),
    "efficientnet_b0": BackboneSpec("EfficientNetB0"),
    "efficientnet_v2_b0": BackboneSpec("EfficientNetV2B0"),
    "resnet50_v2": BackboneSpec("ResNet50V2", scale=1 / 127.5, offset=-1.0),
    "convnext_tiny": BackboneSpec("ConvNeXtTiny"),
}


@dataclass
class Backbone:
    model: object           # keras.Model: pixels (N, H, W, 3) in 0..255 -> features (N, D)
    info: dict              # recorded in graft.json under "backbone"
    image_size: int

    @property
    def cache_key(self) -> str:
        """Identifies what the features depend on: architecture, cut and weights."""
        parts = [self.info["name"], str(self.info.get("cut_layer")), self.info["weights"]["sha256"],
                 str(self.image_size)]
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]


def is_source_model(name: str) -> bool:
    return name.endswith(".keras") or Path(name).is_file()


def load_backbone(name: str, weights: str | None = None, image_size: int | None = None,
                  cut_layer: str | None = None) -> Backbone:
    """Build a frozen feature extractor from a registry name or a saved .keras model."""
    if is_source_model(name):
        return _from_source_model(Path(name), weights, image_size, cut_layer)
    if name not in REGISTRY:
        raise BackboneError(f"unknown backbone {name!r}; allowed: {', '.join(REGISTRY)}, "
                            "or the path of a saved .keras model")
    if cut_layer:
        raise BackboneError("--cut-layer applies to a source .keras model, not to a registered "
                            f"backbone ({name!r})")
    return _from_registry(name, REGISTRY[name], weights or "imagenet", image_size)


def _from_registry(name: str, spec: BackboneSpec, weights: str, image_size: int | None) -> Backbone:
    import keras

    size = image_size or spec.size
    constructor = getattr(keras.applications, spec.application)
    keras_weights = "imagenet" if weights == "imagenet" else None
    try:
        base = constructor(include_top=False, weights=keras_weights, input_shape=(size, size, 3),
                           pooling="avg", **spec.kwargs)
    except ValueError as exc:
        raise BackboneError(f"{name} cannot be built at {size}x{size}: {exc}") from None
    except Exception as exc:  # Keras' get_file raises a bare Exception on a failed download
        if weights == "imagenet":
            raise WeightsError(f"could not download the ImageNet weights for {name} ({exc}); "
                               "pass a local copy with --weights FILE, or train from random "
                               "features with --weights none") from None
        raise
    if weights not in ("imagenet", "none"):
        _load_weights_file(base, weights)
    inputs = keras.Input((size, size, 3), name="pixels")
    x = inputs
    if spec.scale is not None:
        x = keras.layers.Rescaling(spec.scale, offset=spec.offset, name="normalise")(x)
    features = base(x, training=False)
    model = keras.Model(inputs, features, name=f"{name}_features")
    model.trainable = False
    info = {"name": name, "source": f"keras.applications.{spec.application}",
            "cut_layer": None, "feature_dim": int(features.shape[-1]),
            "normalisation": ({"scale": spec.scale, "offset": spec.offset}
                              if spec.scale is not None else "inside the model"),
            "weights": {"source": weights, "sha256": weights_sha256(base)}}
    if weights not in ("imagenet", "none"):
        info["weights"]["file_sha256"] = _file_sha(weights)
    return Backbone(model, info, size)


def _from_source_model(path: Path, weights: str | None, image_size: int | None,
                       cut_layer: str | None) -> Backbone:
    import keras

    if not path.is_file():
        raise BackboneError(f"{path}: no such source model file")
    try:
        source = keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as exc:
        raise BackboneError(f"{path}: cannot load the source model ({first_line(exc, 200)})") from None
    if weights == "imagenet":
        raise WeightsError(f"{path}: --weights imagenet applies to registered backbones; a source "
                           "model brings its own weights (omit --weights, or pass --weights FILE)")
    if weights == "none":
        raise WeightsError(f"{path}: --weights none would discard the source model's knowledge; "
                           "omit --weights to use its own weights")
    if weights:
        _load_weights_file(source, weights)
    layer = _cut(source, cut_layer, path)
    input_shape = tuple(source.inputs[0].shape[1:])
    if len(input_shape) != 3 or input_shape[-1] != 3:
        raise BackboneError(f"{path}: the source model takes {input_shape}; graft needs an "
                            "(H, W, 3) image input")
    height, width = input_shape[0], input_shape[1]
    if height is None or width is None:
        height = width = image_size or 224
    elif image_size and (image_size, image_size) != (height, width):
        raise BackboneError(f"{path}: the source model takes {height}x{width} images; "
                            f"--image-size {image_size} does not match (omit it)")
    if height != width:
        raise BackboneError(f"{path}: non-square inputs ({height}x{width}) are not supported")
    inner = keras.Model(source.inputs, _output_in(source, layer), name="source_cut")
    inputs = keras.Input((height, width, 3), name="pixels")
    features = inner(inputs, training=False)
    if len(features.shape) == 4:
        features = keras.layers.GlobalAveragePooling2D(name="pool")(features)
    elif len(features.shape) != 2:
        raise BackboneError(f"{path}: layer {layer.name!r} outputs shape {tuple(features.shape)}; "
                            "cut at a layer with (N, D) or (N, H, W, C) output")
    model = keras.Model(inputs, features, name="source_features")
    model.trainable = False
    info = {"name": path.stem, "source": f"{path.name} (sha256 {_file_sha(path)[:16]})",
            "cut_layer": layer.name, "feature_dim": int(features.shape[-1]),
            "normalisation": "inside the source model (it must take RGB 0..255)",
            "weights": {"source": weights or "source model", "sha256": weights_sha256(inner)}}
    return Backbone(model, info, int(height))


def _cut(source, cut_layer: str | None, path: Path):
    names = [layer.name for layer in source.layers]
    if cut_layer:
        if cut_layer not in names:
            shown = ", ".join(names[-8:])
            raise BackboneError(f"{path}: no layer named {cut_layer!r}; the last layers are: {shown}")
        return source.get_layer(cut_layer)
    for layer in reversed(source.layers):  # default: the last pooled feature layer
        if "Pooling" in type(layer).__name__ and len(layer.output.shape) == 2:
            return layer
    if len(source.layers) >= 2:
        return source.layers[-2]  # the layer feeding the old classifier
    raise BackboneError(f"{path}: cannot find a feature layer; pass --cut-layer")


def _output_in(source, layer):
    """The layer's output tensor in ``source``'s graph.

    For a nested model used as a layer (a keras.applications backbone inside the
    source model), ``layer.output`` is the nested model's own output, not
    connected to ``source.inputs``; its call node in ``source`` holds the right one.
    """
    nodes = getattr(layer, "_inbound_nodes", None)
    if nodes and hasattr(layer, "layers"):
        return nodes[-1].output_tensors[0]
    return layer.output


def _load_weights_file(model, weights: str) -> None:
    path = Path(weights)
    if not path.is_file():
        raise WeightsError(f"--weights {weights}: no such file; pass a .weights.h5 / .h5 file, "
                           "'imagenet' or 'none'")
    try:
        model.load_weights(str(path))
    except Exception as exc:
        raise WeightsError(f"{path}: cannot load these weights into the backbone "
                           f"({first_line(exc, 200)})") from None


def weights_sha256(model) -> str:
    digest = hashlib.sha256()
    for array in model.get_weights():
        digest.update(array.tobytes())
    return digest.hexdigest()


def _file_sha(path) -> str:
    from graft.bundle import sha256_file

    return sha256_file(path)
