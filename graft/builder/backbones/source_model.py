"""Any saved Keras model as the source of knowledge, cut at a layer and frozen."""

from __future__ import annotations

from pathlib import Path

from graft.builder.backbones.weights import load_weights_file, weights_sha256
from graft.bundle import sha256_file
from graft.errors import BackboneError, WeightsError, first_line


def from_source_model(path: Path, weights: str | None, image_size: int | None,
                      cut_layer: str | None):
    """Load ``path`` (safe_mode), cut it at ``cut_layer`` (default: its last pooled features)."""
    import keras

    from graft.builder.backbones import Backbone

    if not path.is_file():
        raise BackboneError(f"{path}: no such source model file")
    try:
        source = keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as exc:
        raise BackboneError(f"{path}: cannot load the source model ({first_line(exc, 200)})") from exc
    if weights == "imagenet":
        raise WeightsError(f"{path}: --weights imagenet applies to registered backbones; a source "
                           "model brings its own weights (omit --weights, or pass --weights FILE)")
    if weights == "none":
        raise WeightsError(f"{path}: --weights none would discard the source model's knowledge; "
                           "omit --weights to use its own weights")
    if weights:
        load_weights_file(source, weights)
    layer = cut(source, cut_layer, path)
    height = _input_size(source, image_size, path)
    inner = keras.Model(source.inputs, output_in(source, layer), name="source_cut")
    inputs = keras.Input((height, height, 3), name="pixels")
    features = inner(inputs, training=False)
    if len(features.shape) == 4:
        features = keras.layers.GlobalAveragePooling2D(name="pool")(features)
    elif len(features.shape) != 2:
        raise BackboneError(f"{path}: layer {layer.name!r} outputs shape {tuple(features.shape)}; "
                            "cut at a layer with (N, D) or (N, H, W, C) output")
    model = keras.Model(inputs, features, name="source_features")
    model.trainable = False
    file_sha = sha256_file(path)
    info = {"name": path.stem, "source": f"{path.name} (sha256 {file_sha[:16]})",
            "cut_layer": layer.name, "feature_dim": int(features.shape[-1]),
            "normalisation": "inside the source model (it must take RGB 0..255)",
            "weights": {"source": "file" if weights else "source model", "sha256": weights_sha256(inner)}}
    if weights:
        info["weights"].update(file=Path(weights).name, file_sha256=sha256_file(weights))
    return Backbone(model, info, int(height), architecture=f"source-file:{file_sha}")


def _input_size(source, image_size: int | None, path: Path) -> int:
    input_shape = tuple(source.inputs[0].shape[1:])
    if len(input_shape) != 3 or input_shape[-1] != 3:
        raise BackboneError(f"{path}: the source model takes {input_shape}; graft needs an "
                            "(H, W, 3) image input")
    height, width = input_shape[0], input_shape[1]
    if height is None or width is None:
        return image_size or 224
    if image_size and (image_size, image_size) != (height, width):
        raise BackboneError(f"{path}: the source model takes {height}x{width} images; "
                            f"--image-size {image_size} does not match (omit it)")
    if height != width:
        raise BackboneError(f"{path}: non-square inputs ({height}x{width}) are not supported")
    return height


def cut(source, cut_layer: str | None, path: Path):
    """The layer to cut at: the named one, else the last pooled feature layer, else the one
    feeding the old classifier."""
    names = [layer.name for layer in source.layers]
    if cut_layer:
        if cut_layer not in names:
            shown = ", ".join(names[-8:])
            raise BackboneError(f"{path}: no layer named {cut_layer!r}; the last layers are: {shown}")
        return source.get_layer(cut_layer)
    for layer in reversed(source.layers):
        if "Pooling" in type(layer).__name__ and len(layer.output.shape) == 2:
            return layer
    if len(source.layers) >= 2:
        return source.layers[-2]
    raise BackboneError(f"{path}: cannot find a feature layer; pass --cut-layer")


def output_in(source, layer):
    """The layer's output tensor in ``source``'s graph.

    For a nested model used as a layer (a keras.applications backbone inside the
    source model), ``layer.output`` is the nested model's own output, not
    connected to ``source.inputs``; its call node in ``source`` holds the right one.
    """
    nodes = getattr(layer, "_inbound_nodes", None)
    if nodes and hasattr(layer, "layers"):
        return nodes[-1].output_tensors[0]
    return layer.output
