"""Training batches streamed from feature rows: a ``keras.utils.PyDataset``.

Each epoch visits the rows in an order drawn from ``(seed, epoch)`` (``passes`` times, each
pass in its own order, when a small training split needs more steps an epoch); a batch
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


class SeededBatches(keras.utils.PyDataset):
    """What every training stream shares: an order drawn from ``(seed, epoch)`` (file order
    without a seed), batches of ``batch_size`` positions, and class weights as per-row
    sample weights. Subclasses turn a batch's positions into arrays."""

    def __init__(self, labels, batch_size: int, seed: int | None = None,
                 class_weight: dict[int, float] | None = None, passes: int = 1):
        super().__init__()
        self.labels = np.asarray(labels)
        self.batch_size, self.seed, self.passes = int(batch_size), seed, int(passes)
        self.weights = (None if class_weight is None else
                        np.array([class_weight.get(int(c), 0.0) for c in self.labels], np.float32))
        self.epoch = 0
        self.order = self._order()

    def _order(self) -> np.ndarray:
        if self.seed is None:
            return np.tile(np.arange(len(self.labels)), self.passes)
        return np.concatenate([np.random.default_rng(self._seed(p)).permutation(len(self.labels))
                               for p in range(self.passes)])

    def _seed(self, index: int) -> list[int]:
        """(seed, epoch) for an epoch's first pass, as before passes; (seed, epoch, pass) after."""
        return [self.seed % 2**63, self.epoch] + ([index] if index else [])

    @property
    def num_batches(self) -> int:
        return -(-len(self.order) // self.batch_size)

    def positions(self, index: int) -> np.ndarray:
        return self.order[index * self.batch_size:(index + 1) * self.batch_size]

    def batch(self, x: np.ndarray, positions: np.ndarray):
        y = self.labels[positions]
        return (x, y) if self.weights is None else (x, y, self.weights[positions])

    def on_epoch_end(self) -> None:
        self.epoch += 1
        self.order = self._order()


class FeatureBatches(SeededBatches):
    """(features, labels[, weights]) batches; shuffled per epoch when a seed is given."""

    def __init__(self, rows, labels, batch_size: int, seed: int | None = None,
                 class_weight: dict[int, float] | None = None, passes: int = 1):
        self.rows = rows
        super().__init__(labels, batch_size, seed, class_weight, passes)

    def __getitem__(self, index: int):
        positions = self.positions(index)
        return self.batch(self.rows.take(positions), positions)
