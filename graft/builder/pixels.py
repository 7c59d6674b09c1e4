"""Training on pixels streamed from the image files: the fine-tuning stage's data and model.

``PixelBatches`` reads a batch of images through the runtime's preprocessing
(``features.read_pixels``, which checks each file's hash), decoded in a thread
pool, in an order drawn from ``(seed, epoch)``, and augments it when asked.
Memory holds one batch of pixels, whatever the number of images.
"""

from __future__ import annotations

import keras
import numpy as np

from graft.builder.augment import Augmenter, seed_of
from graft.builder.batches import SeededBatches
from graft.builder.features import read_pixels
from graft.builder.head import join_head
from graft.errors import DataError, ImageError


class InferenceMode(keras.layers.Layer):
    """Calls a model with ``training=False`` whatever the caller says (a functional graph's
    ``training=False`` is overridden by ``fit``'s ``training=True`` in Keras 3)."""

    def __init__(self, model, **kwargs):
        super().__init__(**kwargs)
        self.model = model

    def call(self, inputs):
        return self.model(inputs, training=False)


def trainable_model(backbone, head):
    """pixels -> backbone (inference mode) -> the head's dropout and dense layers."""
    inputs = keras.Input((backbone.image_size, backbone.image_size, 3), name="pixels")
    features = InferenceMode(backbone.model, name="backbone")(inputs)
    return keras.Model(inputs, join_head(head, features), name="graft_fine_tune")


class PixelBatches(SeededBatches):
    """(pixels, labels[, weights]) batches read from the image files, decoded in ``pool``.

    Shuffled per epoch when a seed is given, and augmented (one seed per
    ``(seed, epoch, batch)``) when an augmenter is given.
    """

    def __init__(self, ext, positions, y, contract: dict, batch_size: int, pool, *,
                 seed: int | None = None, augmenter: Augmenter | None = None,
                 class_weight: dict | None = None):
        positions = np.asarray(positions, np.int64)
        self.files = [(ext.samples[p].path, ext.content_sha[p]) for p in positions]
        self.contract, self.pool, self.augmenter = contract, pool, augmenter
        super().__init__(np.asarray(y)[positions], batch_size, seed, class_weight)

    def _read(self, position: int) -> np.ndarray:
        path, sha = self.files[position]
        try:
            return read_pixels(path, sha, self.contract)
        except ImageError as exc:
            raise DataError(f"{exc}; fine-tuning reads every image again (it was readable "
                            "when features were extracted)") from None

    def __getitem__(self, index: int):
        positions = self.positions(index)
        pixels = np.stack(list(self.pool.map(self._read, positions)))
        if self.augmenter is not None:
            pixels = self.augmenter(pixels, seed_of(self.seed, self.epoch, index))
        return self.batch(pixels.astype(np.float32), positions)


def predict_pixels(model, batches: PixelBatches, classes: int) -> np.ndarray:
    """The model's probabilities (N, classes) over the batches' images, in order."""
    parts = [np.asarray(model.predict_on_batch(batches[i][0])) for i in range(batches.num_batches)]
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, classes), np.float32)
