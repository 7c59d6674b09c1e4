"""`graft build`: scan, split, extract frozen features once, train the head, write the bundle.

Features come from ``extraction`` (onnxruntime or Keras, locally or on Ray,
cached in shards); the head trains from them streamed (``head``). The bundle is
written into a sibling directory and swapped in whole, so a build killed at any
moment leaves the previous bundle untouched (or none), never a mix of two builds.
"""

from __future__ import annotations

import platform
import warnings
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

import graft
from graft import bundle
from graft.builder import data as datamod
from graft.builder.augment import head_rows
from graft.builder.backbones.registry import DEFAULT as DEFAULT_BACKBONE
from graft.builder.extraction import EXTRACTORS, ExtractOptions, engine_session, extract_features
from graft.builder.features import check_spread, default_cache_dir
from graft.builder.finetune import DEFAULT_EPOCHS, DEFAULT_LR, check_blocks, fine_tune
from graft.builder.finetune import check_options as check_tuning
from graft.builder.head import MIN_STEPS, join_head, predict_rows, train_head
from graft.builder.metrics import classification_metrics
from graft.errors import DataError, GraftError
from graft.progress import Progress
from graft.runtime.batch import ENGINES  # the same engines as graft predict


@dataclass
class BuildOptions:
    """Everything `graft build` can be told. ``check()`` validates it before any work starts."""

    backbone: str = DEFAULT_BACKBONE  # ImageNet weights installed with graft: works offline
    cut_layer: str | None = None
    weights: str | None = None       # None: the backbone's default; a source model's own
    image_size: int | None = None
    resize: str = "stretch"
    epochs: int = 30
    min_steps: int = MIN_STEPS        # the head's least optimizer steps (head.MIN_STEPS)
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
    # Feature extraction (docs/build.md): which extractor, where it runs, its threads.
    extract: str = "auto"            # auto | onnxruntime | keras
    engine: str = "local"            # local | ray
    address: str | None = None       # Ray cluster HOST:PORT (--engine ray); None: a local Ray
    num_cpus: int | None = None      # CPUs of a local Ray
    actors: int | None = None        # Ray actors (default: sized to the nodes)
    cpus_per_actor: int | None = None  # CPUs each Ray actor reserves (default: sized to the nodes)
    schedule_timeout: float = 60.0   # seconds without a Ray result before the build stops
    decode_threads: int | None = None
    model_threads: int | None = None
    # Fine-tuning and augmentation (docs/build.md): a second stage on pixels, views for the head.
    fine_tune: int = 0               # top N blocks of the backbone trained with the head (0: head only)
    fine_tune_lr: float = DEFAULT_LR
    fine_tune_epochs: int = DEFAULT_EPOCHS
    augment: bool = True             # augment the fine-tuning stage's batches
    augment_views: int = 0           # K cached augmented views per training image for the head
    flip: bool = True                # augmentation strengths (see augment.AugmentSpec)
    zoom: float = 0.1
    rotation: float = 0.03
    brightness: float = 0.1
    contrast: float = 0.1

    def extraction(self) -> ExtractOptions:
        return ExtractOptions(self.extract, self.engine, self.address, self.num_cpus, self.actors,
                              self.decode_threads, self.model_threads, self.batch_size,
                              self.cpus_per_actor, self.schedule_timeout)

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
        if not isinstance(self.min_steps, int) or isinstance(self.min_steps, bool) or self.min_steps < 0:
            raise GraftError(f"--min-steps must be an integer >= 0; received {self.min_steps!r}")
        if not isinstance(self.lr, (int, float)) or not self.lr > 0:
            raise GraftError(f"--lr must be a positive number; received {self.lr!r}")
        if self.image_size is not None and (not isinstance(self.image_size, int) or not 16 <= self.image_size <= 1024):
            raise GraftError(f"--image-size must be an integer in 16..1024; received {self.image_size!r}")
        self._check_extraction()
        check_tuning(self)
        return self

    def _check_extraction(self) -> None:
        for name, allowed in (("extract", EXTRACTORS), ("engine", ENGINES)):
            if getattr(self, name) not in allowed:
                raise GraftError(f"--{name} {getattr(self, name)!r} is not known; "
                                 f"allowed: {', '.join(allowed)}")
        if self.engine == "ray" and self.extract == "keras":
            raise GraftError("--engine ray extracts features with onnxruntime on TensorFlow-free "
                             "workers; drop --extract keras, or use --engine local")
        if self.engine == "local" and (self.address or self.num_cpus or self.actors or self.cpus_per_actor):
            raise GraftError("--address, --num-cpus, --actors and --cpus-per-actor apply to --engine ray; "
                             "add it or drop them")
        for name in ("num_cpus", "actors", "cpus_per_actor", "decode_threads", "model_threads"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise GraftError(f"--{name.replace('_', '-')} must be a positive integer; received {value!r}")


def build_bundle(data: str | Path, out: str | Path, options: BuildOptions | None = None,
                 probe: dict | None = None) -> dict:
    """Build a bundle at ``out`` from ``data`` (class folders or a path,label CSV).

    Args:
        data: the dataset: one sub-folder per class, or a CSV of ``path,label``.
        out: the bundle directory to write (swapped in whole when complete).
        options: build settings; defaults to ``BuildOptions()``.
        probe: what `graft probe` measured and chose (``--backbone auto``), kept in graft.json.

    Returns:
        The manifest written to ``out/graft.json``.

    Raises:
        DataError: unusable data or an output that must not be overwritten.
        BackboneError, WeightsError: the backbone cannot be built.
    """
    options = (options or BuildOptions()).check()
    if options.backbone == "auto":
        raise GraftError("--backbone auto is resolved by the probe first (graft.cli.auto); "
                         "build_bundle needs the chosen backbone")
    out = Path(out)
    bundle.recover_directory(out)
    check_output(out, options.overwrite)
    samples = datamod.scan(data)
    labels = sorted({s.label for s in samples})
    with engine_session(options.extraction()):  # --engine ray: join the cluster first, fail fast
        return _build(samples, labels, data, out, options, probe)


def _build(samples, labels, data, out: Path, options: BuildOptions, probe: dict | None = None) -> dict:
    import keras
    import tensorflow as tf

    from graft.builder.backbones import load_backbone

    tf.get_logger().setLevel("ERROR")
    keras.utils.set_random_seed(options.seed)
    tf.config.experimental.enable_op_determinism()
    cache_root = Path(options.cache_dir) if options.cache_dir else default_cache_dir()
    backbone = load_backbone(options.backbone, options.weights, options.image_size, options.cut_layer,
                             cache_dir=cache_root)
    if options.fine_tune:
        check_blocks(backbone, options.fine_tune)  # before anything heavy runs
    if options.weights == "none":
        warnings.warn(f"--weights none: a frozen backbone with random weights transfers no knowledge; "
                      f"the head learns only from what random {options.backbone} features keep")
    size = backbone.image_size
    contract = bundle.preprocessing_contract(size, size, options.resize)
    with Progress(options.progress) as progress:
        ext = extract_features(samples, backbone, contract, cache_root, options.extraction(), progress)
        splits = [datamod.split_of(s.rel, options.val_split, options.test_split) for s in ext.samples]
        counts = datamod.class_counts(labels, ext.samples, splits)
        datamod.check_class_counts(counts, ext.skipped)
        spread = check_spread(ext.rows, backbone.info["name"])
        y = np.array([labels.index(s.label) for s in ext.samples])
        part = {name: np.flatnonzero([s == name for s in splits]) for name in datamod.SPLITS}
        validation = (ext.rows.subset(part["val"]), y[part["val"]]) if len(part["val"]) else None
        train_rows, y_train, views = head_rows(ext, part["train"], y, contract, options, progress)
        head, stage = train_head(train_rows, y_train, validation, len(labels),
                                 epochs=options.epochs, batch_size=options.batch_size, lr=options.lr,
                                 dropout=options.dropout, patience=options.patience, progress=progress,
                                 seed=options.seed, min_steps=options.min_steps)
        stages = [stage if views is None else {**stage, "settings": views}]
        test_probs = predict_rows(head, ext.rows.subset(part["test"]), len(labels))
        if options.fine_tune:  # the second stage: top blocks and head on pixels; test from pixels
            tuned, test_probs = fine_tune(backbone, head, ext, part, y, len(labels), contract, options,
                                          progress, test_probs)
            stages.append(tuned)
    metrics = classification_metrics(y[part["test"]], test_probs.argmax(axis=1), labels)
    model = compose(backbone, head, size)
    manifest = make_manifest(out, data, labels, contract, backbone, options, ext, counts, splits,
                             stages, metrics)
    if options.fine_tune:
        manifest["backbone"]["fine_tuned_blocks"] = stages[-1]["settings"]["unfrozen_blocks"]
    manifest["backbone"]["feature_spread"] = round(spread, 6)
    manifest["dataset"]["extraction"] = ext.record
    if probe:
        manifest["probe"] = probe
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
    model = keras.Model(inputs, join_head(head, features), name="graft_classifier")
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
             if k not in ("cache_dir", "overwrite", "progress", "backbone", "cut_layer", "weights")
             and (k == "batch_size" or k not in asdict(ExtractOptions()))}  # see dataset.extraction
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
    out = out.resolve() if out.is_symlink() else out  # a linked bundle is replaced where it lives
    with bundle.staging_directory(out) as staging:  # locked from birth: no clean-up takes it
        with bundle.atomic_path(staging / bundle.KERAS_NAME, suffix=".keras") as tmp:
            model.save(tmp)
        bundle.write_splits(staging, root, rows)
        bundle.write_manifest(staging, manifest)
        bundle.fsync_dir(staging)
        if out.is_dir():
            with bundle.locked(out):  # no export or verify is halfway through updating it
                bundle.swap_directory(staging, out)
        else:
            bundle.swap_directory(staging, out)
