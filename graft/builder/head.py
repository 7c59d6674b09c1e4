"""The new head: standardisation, dropout and a dense softmax layer, trained on cached
backbone features.

The head first standardises its inputs by the training features' mean and
variance (streamed from ``Rows``; a ``keras.layers.Rescaling`` layer),
so one learning rate suits every backbone and cut: raw pooled features differ
in scale by orders of magnitude between a mid-level cut, the top and raw
pixels, and an unscaled dense layer under-fits the small ones within a few
dozen optimizer steps. The layer is part of the exported graph, so every
runtime standardises exactly as training did.

Training uses early stopping on the validation loss (the training loss when
there is no validation split) with the best weights restored, and class
weights that balance the classes of the training split. Features are streamed
in batches from ``Rows`` (shards on disk, or an in-memory array: the same
batches either way), in an order drawn from the seed for each epoch, so memory
holds one batch and the same data and seed give the same head.
"""

from __future__ import annotations

import time

import numpy as np

from graft.progress import Progress

# Training steps per call into TensorFlow: the same steps and results, less per-step overhead
# (about 15% of the head's training time on 2 cores).
STEPS_PER_EXECUTION = 16
# A feature whose variance is below this fraction of the mean variance is scaled as if it had
# that much: a nearly constant feature (a channel that rarely fires) is not blown up 1000-fold.
VARIANCE_FLOOR = 1e-2
# The least optimizer steps a head trains for (``--min-steps``): a tiny training split is one or
# two batches an epoch, and 30 epochs of Adam at 1e-3 leave its head under-fitted. Each epoch
# then passes over the rows more than once, so the epochs (and their validation) stay as many.
MIN_STEPS = 300


def feature_moments(rows, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (floored) variance per feature of ``rows`` (an array or ``Rows``), read in chunks
    so that memory holds one chunk; combined as Chan et al.'s parallel algorithm does."""
    from graft.builder.batches import as_rows

    rows = as_rows(rows)
    count, mean, m2 = 0, np.zeros(rows.dim), np.zeros(rows.dim)
    for start in range(0, len(rows), chunk):
        part = rows.take(np.arange(start, min(start + chunk, len(rows)))).astype(np.float64)
        n, part_mean = len(part), part.mean(axis=0)
        delta, total = part_mean - mean, count + n
        m2 += ((part - part_mean) ** 2).sum(axis=0) + delta ** 2 * count * n / total
        mean, count = mean + delta * n / total, total
    variance = m2 / max(count, 1)
    return mean, floor_variance(variance)


def floor_variance(variance: np.ndarray) -> np.ndarray:
    """``variance`` with ``VARIANCE_FLOOR`` of its mean as the least (and 1e-12 if all are 0)."""
    return np.maximum(variance, max(VARIANCE_FLOOR * float(variance.mean()), 1e-12))


def make_head(feature_dim: int, classes: int, dropout: float, mean=None, variance=None):
    """A Keras model: features (N, D) -> standardised -> dropout -> probabilities (N, classes).

    ``mean`` and ``variance`` (D,) are the training features' (``feature_moments``); without
    them the standardisation is the identity. It is a ``Rescaling`` layer, x / sd - mean / sd,
    whose arrays become constants of every traced graph (``Normalization`` keeps its statistics
    as eager tensors, which a traced function captures as inputs that tf2onnx cannot feed).
    """
    import keras

    mean = np.zeros(feature_dim) if mean is None else np.asarray(mean, np.float64)
    sd = np.ones(feature_dim) if variance is None else np.sqrt(np.asarray(variance, np.float64))
    return keras.Sequential([
        keras.Input((feature_dim,), name="features"),
        keras.layers.Rescaling((1 / sd).astype(np.float32), offset=(-mean / sd).astype(np.float32),
                               name="head_norm"),
        keras.layers.Dropout(dropout, name="head_dropout"),
        keras.layers.Dense(classes, activation="softmax", name="probs"),
    ], name="head")


def join_head(head, features):
    """The head's layers applied to a backbone's features tensor, in a larger graph
    (the exported classifier, the fine-tuning model): the probabilities tensor."""
    standardised = head.get_layer("head_norm")(features)
    return head.get_layer("probs")(head.get_layer("head_dropout")(standardised))


def class_weights(y_train: np.ndarray, classes: int) -> dict[int, float]:
    """Weights inversely proportional to class frequency (classes absent from training get none)."""
    present = np.bincount(y_train, minlength=classes)
    return {i: float(len(y_train) / (classes * n)) for i, n in enumerate(present) if n}


def train_head(x_train, y_train, validation, classes: int, *, epochs: int, batch_size: int,
               lr: float, dropout: float, patience: int, progress: Progress | None = None,
               seed: int = 0, min_steps: int = 0):
    """Train a new head on features; return (head, stage record for graft.json).

    Args:
        x_train, y_train: training features (N, D) as an array or ``Rows``, and label indices (N,).
        validation: (features, labels) or None.
        classes: number of labels.
        progress: a bar to show epochs on (optional).
        seed: draws the order of the training rows in each epoch.
        min_steps: when ``epochs`` epochs make fewer optimizer steps than this, each epoch passes
            over the training rows as often as it takes (early stopping still stops it).

    Returns:
        The trained head and ``{"name": "head", "history": ..., "epochs_run": ...,
        "best_epoch": ..., "monitor": ..., "seconds": ..., "passes_per_epoch": ...}``.
    """
    import keras

    from graft.builder.batches import FeatureBatches, as_rows

    train = as_rows(x_train)
    head = make_head(train.dim, classes, dropout, *feature_moments(train))
    head.compile(optimizer=keras.optimizers.Adam(lr), loss="sparse_categorical_crossentropy",
                 metrics=["accuracy"], steps_per_execution=STEPS_PER_EXECUTION)
    monitor = "val_loss" if validation is not None else "loss"
    callbacks = [keras.callbacks.EarlyStopping(monitor=monitor, patience=patience,
                                               restore_best_weights=True)]
    passes = max(1, -(-min_steps // (epochs * -(-len(train) // batch_size))))
    if progress is not None:
        callbacks.append(epoch_progress(progress, "training", epochs))
    y_train = np.asarray(y_train)
    batches = FeatureBatches(train, y_train, batch_size, seed=seed,
                             class_weight=class_weights(y_train, classes), passes=passes)
    val = None if validation is None else FeatureBatches(as_rows(validation[0]), validation[1], batch_size)
    started = time.perf_counter()
    fit = head.fit(batches, epochs=epochs, validation_data=val, callbacks=callbacks, verbose=0)
    stage = stage_record("head", fit.history, monitor, time.perf_counter() - started)
    return head, {**stage, "passes_per_epoch": passes, "min_steps": min_steps}


def predict_rows(head, rows, classes: int, chunk: int = 4096) -> np.ndarray:
    """The head's probabilities (N, classes) for features given as an array or ``Rows``."""
    from graft.builder.batches import as_rows

    rows = as_rows(rows)
    parts = [np.asarray(head.predict_on_batch(rows.take(np.arange(i, min(i + chunk, len(rows))))))
             for i in range(0, len(rows), chunk)]
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, classes), np.float32)


def stage_record(name: str, history: dict, monitor: str, seconds: float, **settings) -> dict:
    """One training stage as graft.json keeps it: rounded history, where it stopped, why."""
    losses = history[monitor]
    return {"name": name,
            "history": {key: [round(float(v), 5) for v in values] for key, values in history.items()},
            "epochs_run": len(losses), "best_epoch": int(np.argmin(losses)) + 1, "monitor": monitor,
            "seconds": round(seconds, 2), **({"settings": settings} if settings else {})}


def epoch_progress(progress: Progress, description: str, epochs: int):
    """A Keras callback that moves one progress line per epoch and shows the losses."""
    import keras

    class EpochProgress(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.task = progress.task(description, total=epochs)

        def on_epoch_end(self, epoch, logs=None):
            shown = ("loss", "val_loss", "val_accuracy")
            self.task.update(status="  ".join(f"{k} {v:.3f}" for k, v in (logs or {}).items() if k in shown))
            self.task.advance(1)

        def on_train_end(self, logs=None):
            self.task.finish()

    return EpochProgress()
