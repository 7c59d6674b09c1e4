"""Fine-tuning units: a backbone's own blocks, in graph order, or its weighted layers.

``graft build --fine-tune N`` trains the top N *blocks*. A block is what the
backbone's authors built it from, found by its layers' names:

| family | blocks, bottom to top |
|---|---|
| EfficientNet(-Lite, B0, V2) | ``stem``, ``block1a`` ... ``block7a`` (MBConv), ``top`` (1x1 conv) |
| MobileNetV2 | ``stem``, ``expanded_conv``, ``block_1`` ... ``block_16``, ``top`` (``Conv_1``) |
| MobileNetV3 | ``stem``, ``expanded_conv``, ``expanded_conv_1`` ..., ``top`` (``conv_1``) |
| ResNetV2 | ``stem`` (``conv1``), ``conv2_block1`` ... ``conv5_block3`` (``post_bn``: frozen) |
| ConvNeXt | ``stem``, ``stage_0_block_0`` ..., ``downsampling_i`` between stages, ``top`` (norm) |
| VGG | ``block1`` ... ``block5`` |

A weighted layer that no block pattern names (a layer a source model adds, a
final normalisation) is a unit of its own, in graph order. A source model whose
layers follow none of these patterns is fine-tuned by *layers*: each layer with
trainable weights (BatchNormalization aside) is one unit.

BatchNormalization layers never train: they stay ``trainable=False``, so Keras
runs them in inference mode and their moving statistics stay as they were.
graft's own ``normalise`` layer (the backbone's preprocessing) never trains.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from graft.errors import BackboneError

# family -> (block pattern, other patterns); each pattern maps a layer name to its group.
# A family applies when its block pattern names at least two groups.
FAMILIES: dict[str, tuple[tuple[str, str], tuple[tuple[str, str], ...]]] = {
    "efficientnet": ((r"^(block\d+[a-z]+)_", r"\1"), ((r"^(stem|top)_", r"\1"),)),
    "mobilenet_v2": ((r"^(block_\d+)_", r"\1"), ((r"^expanded_conv_", "expanded_conv"),
                                                 (r"^(bn_)?Conv1$", "stem"), (r"^Conv_1(_bn)?$", "top"))),
    "mobilenet_v3": ((r"^(expanded_conv(_\d+)?)_", r"\1"), ((r"^conv(_bn)?$", "stem"),
                                                            (r"^conv_1(_bn)?$", "top"))),
    "resnet_v2": ((r"^(conv\d+_block\d+)_", r"\1"), ((r"^conv1_", "stem"), (r"^post_", "top"))),
    "convnext": ((r"_(stage_\d+_block_\d+)_", r"\1"), ((r"_(stem)_", r"\1"),
                                                        (r"_(downsampling)_\w+_(\d+)$", r"\1_\2"),
                                                        (r"^layer_normalization(_\d+)?$", "top"))),
    "vgg": ((r"^(block\d+)_", r"\1"), ()),
}
FROZEN_LAYERS = ("normalise",)  # graft's preprocessing layer: part of the contract, never trained


@dataclass
class Block:
    """One fine-tuning unit: its name and its layers with weights (BatchNormalization included)."""

    name: str
    layers: list


@dataclass
class Units:
    """A backbone's fine-tuning units, bottom to top, and how they were found."""

    kind: str            # "blocks" or "layers"
    family: str | None   # the naming family, for blocks
    blocks: list[Block]

    def describe(self) -> str:
        names = [b.name for b in self.blocks]
        shown = ", ".join(names if len(names) <= 4 else names[:2] + ["..."] + names[-2:])
        kind = self.kind if len(names) != 1 else self.kind[:-1]
        return f"{len(names)} {kind} ({shown})"


def leaf_layers(model) -> list:
    """Every layer of ``model`` in graph order, nested models flattened."""
    found = []
    for layer in model.layers:
        found.extend(leaf_layers(layer) if hasattr(layer, "layers") else [layer])
    return found


def is_batchnorm(layer) -> bool:
    import keras

    return isinstance(layer, keras.layers.BatchNormalization)


def _learnable(model) -> list:
    """The layers that would train if the whole backbone did (preprocessing aside), in graph order.

    Decided by setting the model trainable and reading each layer's trainable
    weights (variables created non-trainable, such as a Normalization layer's
    mean, stay so), then freezing it all again, as a backbone is.
    """
    set_trainable(model, True)
    try:
        return [layer for layer in leaf_layers(model)
                if layer.trainable_weights and layer.name not in FROZEN_LAYERS]
    finally:
        set_trainable(model, False)


def set_trainable(model, value: bool) -> None:
    """Set ``trainable`` on the model and every layer in it.

    A plain ``model.trainable = value`` does nothing when the model's own flag
    already has that value (TensorFlow's attribute tracking skips setting an
    attribute to the object it holds), even if layers inside differ; flipping
    it first makes Keras walk every layer.
    """
    model.trainable = not value
    model.trainable = value


def _group(name: str, patterns) -> str | None:
    for pattern, template in patterns:
        match = re.search(pattern, name)
        if match:
            return match.expand(template)
    return None


def find_units(model) -> Units:
    """The fine-tuning units of a (frozen) backbone model; see the module docstring."""
    layers = _learnable(model)
    weighted = [layer for layer in layers if not is_batchnorm(layer)]
    best, best_hits = None, 0
    for family, (block, _) in FAMILIES.items():
        groups = {_group(layer.name, [block]) for layer in weighted} - {None}
        hits = sum(_group(layer.name, [block]) is not None for layer in weighted)
        if len(groups) >= 2 and hits > best_hits:
            best, best_hits = family, hits
    if best is None:
        return Units("layers", None, [Block(layer.name, [layer]) for layer in weighted])
    block, others = FAMILIES[best]
    grouped: dict[str, list] = {}
    for layer in layers:
        grouped.setdefault(_group(layer.name, [block, *others]) or layer.name, []).append(layer)
    blocks = [Block(name, members) for name, members in grouped.items()
              if any(not is_batchnorm(layer) for layer in members)]
    return Units("blocks", best, blocks)


def unfreeze_top(model, count: int, label: str = "the backbone") -> tuple[Units, list[Block]]:
    """Make the top ``count`` units of ``model`` trainable, BatchNormalization and the rest frozen.

    Args:
        model: the backbone's Keras model (frozen, as graft builds it).
        count: how many units, from the top.
        label: the backbone's name, for the error message.

    Returns:
        The units found and the ones unfrozen (bottom to top).

    Raises:
        BackboneError: ``count`` is below 1 or above the number of units.
    """
    units = find_units(model)
    check_count(units, count, label)
    chosen = units.blocks[len(units.blocks) - count:]
    train = {id(layer) for block in chosen for layer in block.layers if not is_batchnorm(layer)}
    set_trainable(model, True)
    for layer in leaf_layers(model):
        layer.trainable = id(layer) in train
    return units, chosen


def check_count(units: Units, count: int, label: str) -> None:
    """Refuse a ``--fine-tune`` count the backbone does not have."""
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= len(units.blocks):
        raise BackboneError(f"--fine-tune {count!r}: {label} has {units.describe()}; pass a number "
                            f"from 1 to {len(units.blocks)}")
