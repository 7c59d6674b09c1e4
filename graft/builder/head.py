"""The new head: dropout and a dense softmax layer, trained on cached backbone features.

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


def make_head(feature_dim: int, classes: int, dropout: float):
    """A Keras model: features (N, D) -> probabilities (N, classes)."""
    import keras

    return keras.Sequential([
        keras.Input((feature_dim,), name="features"),
        keras.layers.Dropout(dropout, name="head_dropout"),
        keras.layers.Dense(classes, activation="softmax", name="probs"),
    ], name="head")


def join_head(head, features):
    """The head's layers applied to a backbone's features tensor, in a larger graph
    (the exported classifier, the fine-tuning model): the probabilities tensor."""
    return head.get_layer("probs")(head.get_layer("head_dropout")(features))


def class_weights(y_train: np.ndarray, classes: int) -> dict[int, float]:
    """Weights inversely proportional to class frequency (classes absent from training get none)."""
    present = np.bincount(y_train, minlength=classes)
    return {i: float(len(y_train) / (classes * n)) for i, n in enumerate(present) if n}


def train_head(x_train, y_train, validation, classes: int, *, epochs: int, batch_size: int,
               lr: float, dropout: float, patience: int, progress: Progress | None = None,
               seed: int = 0):
    """Train a new head on features; return (head, stage record for graft.json).

    Args:
        x_train, y_train: training features (N, D) as an array or ``Rows``, and label indices (N,).
        validation: (features, labels) or None.
        classes: number of labels.
        progress: a bar to show epochs on (optional).
        seed: draws the order of the training rows in each epoch.

    Returns:
        The trained head and ``{"name": "head", "history": ..., "epochs_run": ...,
        "best_epoch": ..., "monitor": ..., "seconds": ...}``.
    """
    import keras

    from graft.builder.batches import FeatureBatches, as_rows

    train = as_rows(x_train)
    head = make_head(train.dim, classes, dropout)
    head.compile(optimizer=keras.optimizers.Adam(lr), loss="sparse_categorical_crossentropy",
                 metrics=["accuracy"], steps_per_execution=STEPS_PER_EXECUTION)
    monitor = "val_loss" if validation is not None else "loss"
    callbacks = [keras.callbacks.EarlyStopping(monitor=monitor, patience=patience,
                                               restore_best_weights=True)]
    if progress is not None:
        callbacks.append(epoch_progress(progress, "training", epochs))
    y_train = np.asarray(y_train)
    batches = FeatureBatches(train, y_train, batch_size, seed=seed,
                             class_weight=class_weights(y_train, classes))
    val = None if validation is None else FeatureBatches(as_rows(validation[0]), validation[1], batch_size)
    started = time.perf_counter()
    fit = head.fit(batches, epochs=epochs, validation_data=val, callbacks=callbacks, verbose=0)
    return head, stage_record("head", fit.history, monitor, time.perf_counter() - started)


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
