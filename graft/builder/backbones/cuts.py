"""Named cut layers of the EfficientNet-Lite backbones: block ends, and feature models cut there.

A cut is named by the block whose output becomes the features (``block1a`` ...
``block7a``, see ``efficientnet_lite.block_specs``) or ``top`` (the 1x1 head
convolution, the default). The features are the block's output, averaged over
space (global average pooling), as the head sees the default backbone's.
``graft build --backbone efficientnet_lite0 --cut-layer block5c`` builds one;
``graft probe`` scores several cuts from one forward pass (``features_model``).
"""

from __future__ import annotations

from graft.errors import BackboneError

TOP = "top"


def cut_names(name: str) -> list[str]:
    """Every cut a Lite variant accepts, bottom to top."""
    from graft.builder.backbones.efficientnet_lite import block_specs

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


def cut_tensor(model, cut: str):
    """The output of block ``cut`` (its last layer) in a Lite features model."""
    layer_name = "top_activation" if cut == TOP else None
    if layer_name is None:
        names = [layer.name for layer in model.layers if layer.name.startswith(f"{cut}_")]
        if not names:
            raise BackboneError(f"{model.name} has no block {cut!r}")
        layer_name = names[-1]
    return model.get_layer(layer_name).output


def features_model(model, cuts: list[str], name: str):
    """pixels -> the pooled outputs of ``cuts``, concatenated in that order (one cut: its own)."""
    import keras

    pooled = [keras.layers.GlobalAveragePooling2D(name=f"pool_{cut}")(cut_tensor(model, cut))
              for cut in cuts]
    outputs = pooled[0] if len(pooled) == 1 else keras.layers.Concatenate(name="cuts")(pooled)
    cut_model = keras.Model(model.input, outputs, name=name)
    cut_model.trainable = False
    return cut_model
