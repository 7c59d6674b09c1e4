"""Named cut layers of the EfficientNet-Lite backbones: block ends, and feature models cut there.

A cut is named by the block whose output becomes the features (``block1a`` ...
``block7a``, see ``efficientnet_lite.block_specs``) or ``top`` (the 1x1 head
convolution, the default). The features are the block's output, averaged over
space (global average pooling), as the head sees the default backbone's.
The names a variant accepts are ``efficientnet_lite.cut_names``.
``graft build --backbone efficientnet_lite0 --cut-layer block5c`` builds one;
``graft probe`` scores several cuts from one forward pass (``features_model``).
"""

from __future__ import annotations

from graft.errors import BackboneError

TOP = "top"


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
