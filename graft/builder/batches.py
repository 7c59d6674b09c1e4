"""Training batches streamed from feature rows: a ``keras.utils.PyDataset``.

Each epoch visits the rows in an order drawn from ``(seed, epoch)``; a batch
reads only its rows (``Rows.take``), so memory holds one batch whether the rows
are shards on disk or an array in memory, and both give the same batches.
Class weights become per-row sample weights, as Keras' ``class_weight`` does.
"""

from __future__ import annotations

import keras
import numpy as np

from graft.builder.shards import ArrayRows


def as_rows(features):
    """``Rows`` for an (N, D) array (or list); ``Rows`` (``take``, ``dim``) pass through."""
    if isinstance(features, np.ndarray) or not hasattr(features, "dim"):
        return ArrayRows(np.asarray(features, np.float32))
    return features


class FeatureBatches(keras.utils.PyDataset):
    """(features, labels[, weights]) batches; shuffled per epoch when a seed is given."""

    def __init__(self, rows, labels, batch_size: int, seed: int | None = None,
                 class_weight: dict[int, float] | None = None):
        super().__init__()
        self.rows, self.labels = rows, np.asarray(labels)
        self.batch_size, self.seed = int(batch_size), seed
        self.weights = None
        if class_weight is not None:
            table = np.zeros(int(self.labels.max(initial=0)) + 1, np.float32)
            for label, weight in class_weight.items():
                if label < len(table):
                    table[label] = weight
            self.weights = table[self.labels]
        self.epoch = 0
        self.order = self._order()

    def _order(self) -> np.ndarray:
        if self.seed is None:
            return np.arange(len(self.rows))
        return np.random.default_rng([self.seed % 2**63, self.epoch]).permutation(len(self.rows))

    @property
    def num_batches(self) -> int:
        return -(-len(self.rows) // self.batch_size)

    def __getitem__(self, index: int):
        positions = self.order[index * self.batch_size:(index + 1) * self.batch_size]
        x, y = self.rows.take(positions), self.labels[positions]
        return (x, y) if self.weights is None else (x, y, self.weights[positions])

    def on_epoch_end(self) -> None:
        self.epoch += 1
        self.order = self._order()
