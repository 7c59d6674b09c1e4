"""Fine-tuning, the second stage: the top N blocks of the backbone train end to end with the head.

It starts once the head has converged on cached features (``head``):

1. The top N blocks (``backbones.blocks``) become trainable; every other layer,
   and every BatchNormalization layer, stays frozen. The backbone runs in
   inference mode throughout (BatchNormalization uses and keeps its moving
   statistics; dropout inside the backbone is off); only the head's dropout acts.
2. Images stream from disk through the runtime's preprocessing
   (``features.read_pixels``), decoded in threads a batch at a time, in an order
   drawn from ``(seed, epoch)``; training batches are augmented (``augment``)
   unless ``--no-augment``. No cached features are used in this stage.
3. Adam at a low learning rate, early stopping on the validation loss with the
   best weights restored. The head-only model counts as a candidate: when no
   epoch lowers the validation loss below it, its weights are kept and the
   stage says ``kept: "head"``.
4. Validation and test metrics are recorded before (the head on cached
   features) and after (the whole model on pixels); the test predictions of
   the final model come from pixels.
"""

from __future__ import annotations

import time

import numpy as np

from graft.builder.augment import AugmentSpec
from graft.builder.backbones.blocks import (check_count, find_units, is_batchnorm, leaf_layers,
                                            set_trainable, unfreeze_top)
from graft.builder.head import class_weights, epoch_progress, predict_rows, stage_record
from graft.errors import GraftError
from graft.runtime.pipeline import decode_pool

# Adam at 1e-4: ten times the Keras guide's 1e-5, which fine-tunes a whole Xception over many
# steps. graft tunes a few top blocks for at most 10 epochs of a small set, where 1e-5 barely
# moves them (benchmarks/bench_finetune.py: validation loss -0.05 against -0.13 at 1e-4, test
# accuracy +1.2 against +3.7 points); the head's 1e-3 would erase what ImageNet taught them.
DEFAULT_LR = 1e-4
DEFAULT_EPOCHS = 10
MAX_VIEWS = 64


def check_options(options) -> None:
    """Validate the fine-tuning and augmentation settings of a ``BuildOptions`` (GraftError)."""
    for name, low in (("fine_tune", 0), ("fine_tune_epochs", 1), ("augment_views", 0)):
        value = getattr(options, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise GraftError(f"--{name.replace('_', '-')} must be an integer of at least {low}; "
                             f"received {value!r}")
    if options.augment_views > MAX_VIEWS:
        raise GraftError(f"--augment-views {options.augment_views}: at most {MAX_VIEWS} views per image")
    lr = options.fine_tune_lr
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
        raise GraftError(f"--fine-tune-lr must be a positive number; received {lr!r}")
    if not options.fine_tune and (lr != DEFAULT_LR or options.fine_tune_epochs != DEFAULT_EPOCHS
                                  or options.augment is not True):
        raise GraftError("--fine-tune-lr, --fine-tune-epochs and --no-augment apply to the "
                         "fine-tuning stage; add --fine-tune N or leave them out")
    spec = AugmentSpec.of(options).check()
    if spec != AugmentSpec() and not (options.augment_views or (options.fine_tune and options.augment)):
        raise GraftError("--no-flip, --zoom, --rotation, --brightness and --contrast set the "
                         "augmentation of --augment-views and --fine-tune; add one or leave them out")
    if options.augment_views and spec.identity:
        raise GraftError(f"--augment-views {options.augment_views} with every augmentation off "
                         "would repeat the images; allow a flip, zoom, rotation, brightness or contrast")


def check_blocks(backbone, count: int) -> None:
    """Refuse ``--fine-tune N`` beyond what the backbone has, before anything heavy runs."""
    check_count(find_units(backbone.model), count, backbone.info["name"])


def scores(probs: np.ndarray, y: np.ndarray) -> dict:
    """Accuracy and mean cross-entropy (None for an empty split)."""
    if not len(y):
        return {"count": 0, "accuracy": None, "loss": None}
    picked = np.clip(probs[np.arange(len(y)), y], 1e-7, 1.0)
    return {"count": int(len(y)), "accuracy": round(float((probs.argmax(1) == y).mean()), 4),
            "loss": round(float(-np.log(picked).mean()), 5)}


def fine_tune(backbone, head, ext, part: dict, y: np.ndarray, classes: int, contract: dict, options,
              progress=None, head_test_probs: np.ndarray | None = None) -> tuple[dict, np.ndarray]:
    """Train the top ``options.fine_tune`` blocks with the head; the weights change in place.

    Args:
        backbone, head: the build's backbone and the head trained on cached features.
        ext: the build's ``FeatureSet`` (samples, hashes, cached rows).
        part: split name -> positions in ``ext.samples``; ``y``: their label indices.
        classes: number of labels; ``contract``: the preprocessing contract.
        options: a ``BuildOptions`` (fine_tune, fine_tune_lr, fine_tune_epochs, patience,
            batch_size, seed, decode_threads, augment and the augmentation strengths).
        progress: a ``Progress`` for the epochs (optional).
        head_test_probs: the head's test probabilities on cached features (for "before").

    Returns:
        (the ``fine_tune`` stage record for graft.json, the final model's test probabilities
        computed from pixels).
    """
    import keras

    from graft.builder.augment import Augmenter
    from graft.builder.pixels import PixelBatches, predict_pixels, trainable_model

    started = time.perf_counter()
    keras.utils.set_random_seed(options.seed)
    test_y = y[part["test"]]
    before = {"val": scores(predict_rows(head, ext.rows.subset(part["val"]), classes), y[part["val"]]),
              "test": scores(head_test_probs if head_test_probs is not None else
                             predict_rows(head, ext.rows.subset(part["test"]), classes), test_y)}
    units, chosen = unfreeze_top(backbone.model, options.fine_tune, backbone.info["name"])
    model = trainable_model(backbone, head)
    model.compile(optimizer=keras.optimizers.Adam(options.fine_tune_lr),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    spec = AugmentSpec.of(options) if options.augment else None
    pool = decode_pool(options.decode_threads)
    try:
        def batches(split, **kwargs):
            return PixelBatches(ext, part[split], y, contract, options.batch_size, pool, **kwargs)

        augmenter = Augmenter(spec) if spec is not None and not spec.identity else None
        train = batches("train", seed=options.seed, augmenter=augmenter,
                        class_weight=class_weights(y[part["train"]], classes))
        val = batches("val") if len(part["val"]) else None
        monitor = "val_loss" if val is not None else "loss"
        initial = [v.numpy() for v in model.trainable_variables]
        callbacks = [keras.callbacks.EarlyStopping(monitor=monitor, patience=options.patience,
                                                   restore_best_weights=True)]
        if progress is not None:
            callbacks.append(epoch_progress(progress, "fine-tuning", options.fine_tune_epochs))
        fit = model.fit(train, epochs=options.fine_tune_epochs, validation_data=val,
                        callbacks=callbacks, verbose=0)
        kept, after_val = "fine-tuned", before["val"]
        if val is not None:
            after_val = scores(predict_pixels(model, val, classes), y[part["val"]])
        if val is not None and not after_val["loss"] < before["val"]["loss"]:
            for variable, value in zip(model.trainable_variables, initial):
                variable.assign(value)
            kept = "head"
            after_val = scores(predict_pixels(model, val, classes), y[part["val"]])
        test_probs = predict_pixels(model, batches("test"), classes)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        set_trainable(backbone.model, False)
    layers = [layer.name for block in chosen for layer in block.layers if not is_batchnorm(layer)]
    stage = stage_record(
        "fine_tune", fit.history, monitor, time.perf_counter() - started,
        blocks=options.fine_tune, unit=units.kind, family=units.family, available=len(units.blocks),
        unfrozen_blocks=[block.name for block in chosen], unfrozen_layers=layers,
        frozen_batchnorm=sum(map(is_batchnorm, leaf_layers(backbone.model))),
        lr=options.fine_tune_lr, epochs=options.fine_tune_epochs, patience=options.patience,
        batch_size=options.batch_size, augmentation=spec.record() if spec is not None else None)
    stage.update(kept=kept, metrics_before=before,
                 metrics_after={"val": after_val, "test": scores(test_probs, test_y)})
    return stage, test_probs
