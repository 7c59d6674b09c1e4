"""`graft build`: scan, split, extract frozen features once, train the head, write the bundle.

The bundle is written into a sibling directory and swapped in whole, so a
build killed at any moment leaves the previous bundle untouched (or none), never
a mix of two builds.
"""

from __future__ import annotations

import platform
import secrets
import warnings
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

import graft
from graft import bundle
from graft.builder import data as datamod
from graft.builder.features import FeatureCache, check_spread, default_cache_dir, extract
from graft.builder.head import train_head
from graft.builder.metrics import classification_metrics
from graft.errors import DataError, GraftError
from graft.progress import Progress


@dataclass
class BuildOptions:
    """Everything `graft build` can be told. ``check()`` validates it before any work starts."""

    backbone: str = "efficientnet_lite0"  # ImageNet weights installed with graft: works offline
    cut_layer: str | None = None
    weights: str | None = None       # None: the backbone's default; a source model's own
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

    def check(self) -> "BuildOptions":
        """Raise GraftError for a value no build could use; return self."""
        if self.resize not in bundle.RESIZE_MODES:
            raise GraftError(f"--resize {self.resize!r} is not known; allowed: {', '.join(bundle.RESIZE_MODES)}")
        for name, low, high in (("val_split", 0.0, 0.5), ("test_split", 0.0, 0.5), ("dropout", 0.0, 0.999)):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not low <= value <= high:
                raise GraftError(f"--{name.replace('_', '-')} must be in {low}..{high}; received {value!r}")
        if self.val_split + self.test_split >= 0.9:
            raise GraftError(f"--val-split {self.val_split} + --test-split {self.test_split} "
                             "leaves under 10% for training; lower them")
        for name in ("epochs", "batch_size", "patience"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise GraftError(f"--{name.replace('_', '-')} must be a positive integer; received {value!r}")
        if not isinstance(self.lr, (int, float)) or not self.lr > 0:
            raise GraftError(f"--lr must be a positive number; received {self.lr!r}")
        if self.image_size is not None and (not isinstance(self.image_size, int) or not 16 <= self.image_size <= 1024):
            raise GraftError(f"--image-size must be an integer in 16..1024; received {self.image_size!r}")
        return self


def build_bundle(data: str | Path, out: str | Path, options: BuildOptions | None = None) -> dict:
    """Build a bundle at ``out`` from ``data`` (class folders or a path,label CSV).

    Args:
        data: the dataset: one sub-folder per class, or a CSV of ``path,label``.
        out: the bundle directory to write (swapped in whole when complete).
        options: build settings; defaults to ``BuildOptions()``.

    Returns:
        The manifest written to ``out/graft.json``.

    Raises:
        DataError: unusable data or an output that must not be overwritten.
        BackboneError, WeightsError: the backbone cannot be built.
    """
    options = (options or BuildOptions()).check()
    out = Path(out)
    bundle.recover_directory(out)
    check_output(out, options.overwrite)
    samples = datamod.scan(data)
    labels = sorted({s.label for s in samples})

    import keras
    import tensorflow as tf

    from graft.builder.backbones import load_backbone

    tf.get_logger().setLevel("ERROR")
    keras.utils.set_random_seed(options.seed)
    tf.config.experimental.enable_op_determinism()
    cache_root = Path(options.cache_dir) if options.cache_dir else default_cache_dir()
    backbone = load_backbone(options.backbone, options.weights, options.image_size, options.cut_layer,
                             cache_dir=cache_root)
    if options.weights == "none":
        warnings.warn(f"--weights none: a frozen backbone with random weights transfers no knowledge; "
                      f"the head learns only from what random {options.backbone} features keep")
    size = backbone.image_size
    contract = bundle.preprocessing_contract(size, size, options.resize)
    cache = FeatureCache(cache_root, backbone.cache_key, contract)
    with Progress(options.progress) as progress:
        ext = extract(backbone.model, samples, contract, cache, options.batch_size, progress)
        splits = [datamod.split_of(s.rel, options.val_split, options.test_split) for s in ext.samples]
        counts = datamod.class_counts(labels, ext.samples, splits)
        datamod.check_class_counts(counts, ext.skipped)
        spread = check_spread(ext.features, backbone.info["name"])
        y = np.array([labels.index(s.label) for s in ext.samples])
        part = {name: np.array([s == name for s in splits], bool) for name in datamod.SPLITS}
        validation = (ext.features[part["val"]], y[part["val"]]) if part["val"].any() else None
        head, stage = train_head(ext.features[part["train"]], y[part["train"]], validation, len(labels),
                                 epochs=options.epochs, batch_size=options.batch_size, lr=options.lr,
                                 dropout=options.dropout, patience=options.patience, progress=progress)
    test_probs = head.predict(ext.features[part["test"]], verbose=0) if part["test"].any() \
        else np.zeros((0, len(labels)), np.float32)
    metrics = classification_metrics(y[part["test"]], test_probs.argmax(axis=1), labels)
    model = compose(backbone, head, size)
    manifest = make_manifest(out, data, labels, contract, backbone, options, ext, counts, splits,
                             [stage], metrics)
    manifest["backbone"]["feature_spread"] = round(spread, 6)
    rows = split_rows(ext.samples, splits, labels, test_probs)
    write_bundle(out, model, manifest, rows, data)
    return manifest


def check_output(out: Path, overwrite: bool) -> None:
    """Refuse to replace a non-empty output unless --overwrite, and never a foreign folder."""
    if out.exists() and (out.is_file() or any(out.iterdir())):
        if not overwrite:
            raise DataError(f"{out}: already exists and is not empty; choose another -o or pass "
                            "--overwrite")
        if out.is_file() or not bundle.is_bundle(out):
            raise DataError(f"{out}: exists and is not a graft bundle; refusing to overwrite it")


def compose(backbone, head, size: int):
    """pixels (0..255) -> frozen backbone (with its normalisation) -> head."""
    import keras

    inputs = keras.Input((size, size, 3), name="pixels")
    features = backbone.model(inputs, training=False)
    x = head.get_layer("head_dropout")(features)
    probs = head.get_layer("probs")(x)
    model = keras.Model(inputs, probs, name="graft_classifier")
    backbone.model.trainable = False
    return model


def split_rows(samples, splits: list[str], labels: list[str], test_probs: np.ndarray) -> list[dict]:
    """splits.json rows; test rows carry the model's prediction and its score."""
    rows, test_index = [], 0
    for sample, split in zip(samples, splits):
        row = {"path": sample.rel, "file": str(sample.path.resolve()), "label": sample.label, "split": split}
        if split == "test":
            probs = test_probs[test_index]
            test_index += 1
            row.update(predicted=labels[int(probs.argmax())], score=round(float(probs.max()), 6))
        rows.append(row)
    return rows


def make_manifest(out, data, labels, contract, backbone, options, ext, counts, splits,
                  stages: list[dict], metrics) -> dict:
    """graft.json for a new build (exports come later, from `graft export`)."""
    import keras
    import tensorflow as tf

    hyper = {k: v for k, v in asdict(options).items()
             if k not in ("cache_dir", "overwrite", "progress", "backbone", "cut_layer", "weights")}
    return {
        "schema_version": bundle.SCHEMA_VERSION,
        "name": Path(out).resolve().name,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "graft_version": graft.__version__,
        "labels": labels,
        "input": bundle.input_spec(),
        "output": {"name": "probs", "dtype": "float32", "classes": len(labels)},
        "preprocessing": contract,
        "backbone": {**backbone.info, "trainable": False},
        "head": {"layers": ["dropout", "dense_softmax"], "dropout": options.dropout,
                 "units": len(labels), "activation": "softmax"},
        "training": {"hyperparameters": hyper, "stages": stages},
        "dataset": {
            "source": Path(data).name,
            "fingerprint": _fingerprint(ext),
            "images": len(ext.samples) + len(ext.skipped),
            "usable": len(ext.samples),
            "class_counts": counts,
            "split_counts": {name: splits.count(name) for name in datamod.SPLITS},
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


def write_bundle(out: Path, model, manifest: dict, rows: list[dict], data) -> None:
    """Write model.keras, splits.json and graft.json into a sibling directory, then swap it in.

    A rebuilt bundle has no exports: they belonged to the old model.
    """
    root = Path(data).resolve()
    root = root.parent if root.is_file() else root
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.build-{secrets.token_hex(4)}"
    staging.mkdir()
    try:
        with bundle.locked(staging):  # a later build's clean-up leaves a locked staging alone
            with bundle.atomic_path(staging / bundle.KERAS_NAME, suffix=".keras") as tmp:
                model.save(tmp)
            bundle.write_splits(staging, root, rows)
            bundle.write_manifest(staging, manifest)
            bundle.fsync_dir(staging)
            bundle.swap_directory(staging, out)
    finally:
        if staging.exists():
            import shutil

            shutil.rmtree(staging, ignore_errors=True)
