"""The one serving function every converter starts from: pixels (N, H, W, 3) float32 0..255 -> probs."""

from __future__ import annotations


def serving_function(model, height: int, width: int | None = None):
    """A ``tf.function`` with a dynamic batch: ``{"probs": model(pixels)}``; input named ``pixels``."""
    import tensorflow as tf

    spec = tf.TensorSpec((None, height, width or height, 3), tf.float32, name="pixels")

    @tf.function(input_signature=[spec])
    def serve(pixels):
        return {"probs": model(pixels, training=False)}

    return serve, (spec,)
