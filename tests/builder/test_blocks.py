"""Fine-tuning units: every registered backbone's blocks, the layer fallback, the refusal."""

from __future__ import annotations

import numpy as np
import pytest

from graft.builder.backbones import REGISTRY, load_backbone
from graft.builder.backbones.blocks import find_units, is_batchnorm, leaf_layers, unfreeze_top
from graft.errors import BackboneError

# backbone -> (family, number of blocks, first, second from the top, top)
EXPECTED = {
    "efficientnet_lite0": ("efficientnet", 18, "stem", "block7a", "top"),
    "efficientnet_lite1": ("efficientnet", 23, "stem", "block7a", "top"),
    "efficientnet_lite2": ("efficientnet", 23, "stem", "block7a", "top"),
    "mobilenet_v2": ("mobilenet_v2", 19, "stem", "block_16", "top"),
    "mobilenet_v3_small": ("mobilenet_v3", 13, "stem", "expanded_conv_10", "top"),
    "mobilenet_v3_large": ("mobilenet_v3", 17, "stem", "expanded_conv_14", "top"),
    "efficientnet_b0": ("efficientnet", 18, "stem", "block7a", "top"),
    "efficientnet_v2_b0": ("efficientnet", 23, "stem", "block6h", "top"),
    "resnet50_v2": ("resnet_v2", 17, "stem", "conv5_block2", "conv5_block3"),
    "convnext_tiny": ("convnext", 23, "stem", "stage_3_block_2", "top"),
    "vgg16": ("vgg", 5, "block1", "block4", "block5"),
    "vgg19": ("vgg", 5, "block1", "block4", "block5"),
}


def test_every_registered_backbone_has_a_case():
    assert sorted(EXPECTED) == sorted(REGISTRY)


def trainable_layer_names(model) -> set[str]:
    return {layer.name for layer in leaf_layers(model) if layer.trainable_weights}


@pytest.mark.parametrize("name", list(REGISTRY))
def test_registered_backbone_blocks_and_unfreezing(name):
    family, count, first, below_top, top = EXPECTED[name]
    backbone = load_backbone(name, "none", 32)
    units = find_units(backbone.model)
    names = [block.name for block in units.blocks]
    assert (units.kind, units.family, len(names)) == ("blocks", family, count)
    assert (names[0], names[-2], names[-1]) == (first, below_top, top)
    assert len(set(names)) == len(names)
    assert not backbone.model.trainable_weights  # finding the units leaves the backbone frozen
    # Every layer that could learn belongs to exactly one block; preprocessing to none.
    grouped = [layer.name for block in units.blocks for layer in block.layers]
    assert len(grouped) == len(set(grouped)) and "normalise" not in grouped

    found, chosen = unfreeze_top(backbone.model, 2, name)
    assert [block.name for block in chosen] == [below_top, top]
    expected = {layer.name for block in chosen for layer in block.layers if not is_batchnorm(layer)}
    assert expected and trainable_layer_names(backbone.model) == expected
    batchnorms = [layer for layer in leaf_layers(backbone.model) if is_batchnorm(layer)]
    assert all(not layer.trainable for layer in batchnorms)
    with pytest.raises(BackboneError, match=rf"{name} has {count} blocks \({first}, .*, {top}\); "
                                            rf"pass a number from 1 to {count}"):
        unfreeze_top(backbone.model, count + 1, name)


def test_a_source_model_without_named_blocks_counts_its_weighted_layers(tmp_path):
    from models import make_conv_source_model

    backbone = load_backbone(str(make_conv_source_model(tmp_path / "conv.keras")))
    units = find_units(backbone.model)
    assert (units.kind, units.family) == ("layers", None)
    assert [block.name for block in units.blocks] == ["conv1", "dw2", "conv3"]  # bn2 never trains
    unfreeze_top(backbone.model, 1, "conv")
    assert trainable_layer_names(backbone.model) == {"conv3"}
    unfreeze_top(backbone.model, 3, "conv")
    assert trainable_layer_names(backbone.model) == {"conv1", "dw2", "conv3"}
    with pytest.raises(BackboneError, match=r"conv has 3 layers \(conv1, dw2, conv3\); pass a number "
                                            r"from 1 to 3"):
        unfreeze_top(backbone.model, 0, "conv")


def test_named_blocks_in_a_source_model_keep_their_batchnorm_frozen(tmp_path):
    from tuning_models import make_blocks_model

    backbone = load_backbone(str(make_blocks_model(tmp_path / "blocks.keras")))
    units, chosen = unfreeze_top(backbone.model, 2, "blocks")
    assert (units.kind, units.family) == ("blocks", "efficientnet")
    assert [b.name for b in units.blocks] == ["stem", "block1a", "block2a", "top"]
    assert [[layer.name for layer in b.layers] for b in chosen] == [["block2a_conv", "block2a_bn"],
                                                                    ["top_conv", "top_bn"]]
    assert trainable_layer_names(backbone.model) == {"block2a_conv", "top_conv"}
    # A training step moves the unfrozen kernels, never a BatchNorm statistic.
    import keras

    model = keras.Sequential([backbone.model, keras.layers.Dense(2, activation="softmax")])
    model.compile(keras.optimizers.SGD(0.1), "sparse_categorical_crossentropy")
    before = {v.path: v.numpy() for v in model.weights}
    pixels = np.random.default_rng(0).uniform(0, 255, (8, 24, 24, 3)).astype(np.float32)
    model.train_on_batch(pixels, np.arange(8) % 2)
    moved = {path for path, value in before.items()
             if not np.array_equal(value, next(v for v in model.weights if v.path == path).numpy())}
    assert any("block2a_conv" in p for p in moved) and any("top_conv" in p for p in moved)
    assert not any("_bn" in p or "stem" in p or "block1a" in p for p in moved)
