"""A tiny source model whose layers are named like EfficientNet's blocks, for fine-tuning tests.

Its BatchNorm layers hold non-trivial moving statistics, so a training step that
touched them would show. (It has no 1x1 convolution with stride 2: TensorFlow's
oneDNN kernels can corrupt memory computing that layer's weight gradient when it
has fewer than 16 input channels, as ``models.make_conv_source_model``'s ``conv3`` does.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def make_blocks_model(path: Path, size: int = 24) -> Path:
    """stem_conv; block1a (depthwise + BN); block2a (3x3 stride 2 + BN); top (1x1 + BN); pool."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(3)
    inputs = keras.Input((size, size, 3), name="image")
    x = layers.Rescaling(1 / 127.5, offset=-1.0, name="scale")(inputs)
    x = layers.Conv2D(8, 3, padding="same", activation="relu", name="stem_conv")(x)
    x = layers.DepthwiseConv2D(3, padding="same", name="block1a_dwconv")(x)
    x = layers.BatchNormalization(name="block1a_bn")(x)
    x = layers.ReLU(6.0, name="block1a_activation")(x)
    x = layers.Conv2D(16, 3, strides=2, padding="same", name="block2a_conv")(x)
    x = layers.BatchNormalization(name="block2a_bn")(x)
    x = layers.ReLU(6.0, name="block2a_activation")(x)
    x = layers.Conv2D(24, 1, name="top_conv")(x)
    x = layers.BatchNormalization(name="top_bn")(x)
    x = layers.ReLU(6.0, name="top_activation")(x)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    outputs = layers.Dense(10, activation="softmax", name="old_head")(x)
    model = keras.Model(inputs, outputs, name="blocks_source")
    rng = np.random.default_rng(3)
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            channels = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, channels), rng.normal(0, 0.1, channels),
                               rng.normal(0, 0.5, channels), rng.uniform(0.5, 2.0, channels)])
    model.save(path)
    return path
