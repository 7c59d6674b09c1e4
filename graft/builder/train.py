"""`graft build`: scan, split, extract frozen features once, train the head, write the bundle."""

from __future__ import annotations

import json
import platform
import shutil
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

import graft
from graft import bundle
from graft.builder import data as datamod
from graft.builder.features import FeatureCache, default_cache_dir, extract
from graft.builder.report import classification_metrics
from graft.errors import DataError


@dataclass
class BuildOptions:
    backbone: str = "mobilenet_v2"
    cut_layer: str | None = None
    weights: str | None = None       # None: imagenet for registry backbones, a source model's own
    image_size: int | None = None
    resize: str = "stretch"
    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-3
    dropout: float = 0.2
    val_split: float = 0.15
    test_split: float = 0.15
    patience: int = 5
    seed: int = 0
    cache_dir: str | None = None
    overwrite: bool = False
    progress: bool = True


def build_bundle(data: str | Path, out: str | Path, options: BuildOptions | None = None) -> dict:
    """Build a bundle at ``out`` from ``data``; return its manifest."""
    options = options or BuildOptions()
    out = Path(out)
    _check_output(out, options.overwrite)
    if options.val_split + options.test_split >= 0.9:
        raise DataError(f"--val-split {options.val_split} + --test-split {options.test_split} "
                        "leaves under 10% for training; lower them")
    samples = datamod.scan(data)
    labels = sorted({s.label for s in samples})

    import keras
    import tensorflow as tf

    from graft.builder.backbones import load_backbone

    tf.get_logger().setLevel("ERROR")
    keras.utils.set_random_seed(options.seed)
    tf.config.experimental.enable_op_determinism()
    backbone = load_backbone(options.backbone, options.weights, options.image_size, options.cut_layer)
    size = backbone.image_size
    contract = bundle.preprocessing_contract(size, size, options.resize)
    cache = FeatureCache(Path(options.cache_dir) if options.cache_dir else default_cache_dir(),
                         backbone.cache_key, contract)
    with _progress(options.progress) as progress:
        ext = extract(backbone.model, samples, contract, cache, options.batch_size, progress)
        splits = [datamod.split_of(s.rel, options.val_split, options.test_split) for s in ext.samples]
        counts = {label: {split: 0 for split in datamod.SPLITS} for label in labels}
        for sample, split in zip(ext.samples, splits):
            counts[sample.label][split] += 1
        datamod.check_class_counts(counts, ext.skipped)
        y = np.array([labels.index(s.label) for s in ext.samples])
        part = {name: np.array([s == name for s in splits]) for name in datamod.SPLITS}
        head, history = _train_head(ext.features, y, part, len(labels), options, progress)

    test_pred = head.predict(ext.features[part["test"]], verbose=0).argmax(axis=1) if part["test"].any() \
        else np.zeros(0, int)
    metrics = classification_metrics(y[part["test"]], test_pred, labels)
    model = _compose(backbone, head, size)
    manifest = _manifest(out, data, labels, size, contract, backbone, options, ext, counts, splits,
                         history, metrics)
    _write_bundle(out, model, manifest, ext, splits, data)
    return manifest


def _check_output(out: Path, overwrite: bool) -> None:
    if out.exists() and (out.is_file() or any(out.iterdir())):
        if not overwrite:
            raise DataError(f"{out}: already exists and is not empty; choose another -o or pass "
                            "--overwrite")
        if out.is_file() or not bundle.is_bundle(out):
            raise DataError(f"{out}: exists and is not a graft bundle; refusing to overwrite it")


def _progress(enabled: bool):
    import contextlib

    if not enabled:
        return contextlib.nullcontext(None)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description:>9}"), BarColumn(), MofNCompleteColumn(),
                    TimeRemainingColumn(), TextColumn("{task.fields[status]}"),
                    console=Console(stderr=True), transient=False)


def _train_head(features, y, part, classes: int, options: BuildOptions, progress):
    import keras

    head = keras.Sequential([
        keras.Input((features.shape[1],), name="features"),
        keras.layers.Dropout(options.dropout, name="head_dropout"),
        keras.layers.Dense(classes, activation="softmax", name="probs"),
    ], name="head")
    head.compile(optimizer=keras.optimizers.Adam(options.lr),
                 loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    x_train, y_train = features[part["train"]], y[part["train"]]
    has_val = bool(part["val"].any())
    monitor = "val_loss" if has_val else "loss"
    present = np.bincount(y_train, minlength=classes)
    class_weight = {i: float(len(y_train) / (classes * n)) for i, n in enumerate(present) if n}
    callbacks = [keras.callbacks.EarlyStopping(monitor=monitor, patience=options.patience,
                                               restore_best_weights=True)]
    if progress is not None:
        callbacks.append(_EpochProgress(progress, options.epochs))
    fit = head.fit(x_train, y_train, epochs=options.epochs, batch_size=options.batch_size,
                   validation_data=(features[part["val"]], y[part["val"]]) if has_val else None,
                   class_weight=class_weight, callbacks=callbacks, verbose=0, shuffle=True)
    losses = fit.history[monitor]
    history = {key: [round(float(v), 5) for v in values] for key, values in fit.history.items()}
    history.update(epochs_run=len(losses), best_epoch=int(np.argmin(losses)) + 1, monitor=monitor)
    return head, history


class _EpochProgress:
    """A Keras callback that moves a rich progress bar once per epoch."""

    def __new__(cls, progress, epochs):
        import keras

        class Callback(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                self.task = progress.add_task("training", total=epochs, status="")

            def on_epoch_end(self, epoch, logs=None):
                logs = logs or {}
                status = "  ".join(f"{k} {v:.3f}" for k, v in logs.items() if k in ("loss", "val_loss", "val_accuracy"))
                progress.update(self.task, advance=1, status=status)

            def on_train_end(self, logs=None):
                progress.update(self.task, total=progress.tasks[self.task].completed)

        return Callback()


def _compose(backbone, head, size: int):
    """pixels (0..255) -> frozen backbone (with its normalisation) -> head."""
    import keras

    inputs = keras.Input((size, size, 3), name="pixels")
    features = backbone.model(inputs, training=False)
    x = head.get_layer("head_dropout")(features)
    probs = head.get_layer("probs")(x)
    model = keras.Model(inputs, probs, name="graft_classifier")
    backbone.model.trainable = False
    return model


def _manifest(out, data, labels, size, contract, backbone, options, ext, counts, splits,
              history, metrics) -> dict:
    import keras
    import tensorflow as tf

    fingerprint = _fingerprint(ext)
    split_counts = {name: splits.count(name) for name in datamod.SPLITS}
    hyper = {k: v for k, v in asdict(options).items()
             if k not in ("cache_dir", "overwrite", "progress", "backbone", "cut_layer", "weights")}
    return {
        "schema_version": bundle.SCHEMA_VERSION,
        "name": Path(out).resolve().name,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "graft_version": graft.__version__,
        "labels": labels,
        "input": {"name": "pixels", "shape": [None, size, size, 3], "dtype": "float32", "layout": "NHWC"},
        "output": {"name": "probs", "shape": [None, len(labels)], "dtype": "float32"},
        "preprocessing": contract,
        "backbone": {**backbone.info, "trainable": False},
        "head": {"layers": ["dropout", "dense_softmax"], "dropout": options.dropout,
                 "units": len(labels), "activation": "softmax"},
        "training": {"hyperparameters": hyper, **history},
        "dataset": {
            "source": Path(data).name,
            "fingerprint": fingerprint,
            "images": len(ext.samples) + len(ext.skipped),
            "usable": len(ext.samples),
            "class_counts": counts,
            "split_counts": split_counts,
            "split_rule": f"sha256(relative path): test < {options.test_split}, "
                          f"val < {options.test_split + options.val_split}, else train",
            "skipped": ext.skipped,
            "feature_cache_hits": ext.cache_hits,
        },
        "metrics": metrics,
        "tools": {"python": platform.python_version(), "tensorflow": tf.__version__,
                  "keras": keras.__version__, "numpy": np.__version__},
        "exports": [],
    }


def _fingerprint(ext) -> str:
    import hashlib

    rows = sorted(f"{s.rel}\t{s.label}\t{sha}" for s, sha in zip(ext.samples, ext.content_sha))
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()


def _write_bundle(out: Path, model, manifest: dict, ext, splits, data) -> None:
    """Write model.keras, splits.json and graft.json; a rebuilt bundle drops old exports."""
    out.mkdir(parents=True, exist_ok=True)
    with bundle.atomic_path(out / bundle.KERAS_NAME, suffix=".keras") as tmp:
        model.save(tmp)
    root = Path(data).resolve()
    root = root.parent if root.is_file() else root
    split_rows = {"root": str(root), "samples": [
        {"path": s.rel, "file": str(s.path.resolve()), "label": s.label, "split": split}
        for s, split in zip(ext.samples, splits)]}
    bundle.atomic_write_bytes(out / "splits.json", json.dumps(split_rows, indent=1).encode())
    shutil.rmtree(out / bundle.EXPORTS_DIR, ignore_errors=True)
    bundle.write_manifest(out, manifest)
