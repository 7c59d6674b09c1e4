"""Parity: run an exported file next to the Keras model and measure how far apart they are.

Agreement with Keras needs no labels, so it is measured on every usable image
of the bundle's dataset (all splits), plus any extra folders given (labelled or
not); past ``MAX_IMAGES`` a seeded sample is taken, held-out images first, and
the sample is stated. Accuracy, and the accuracy drop from Keras, stay on the
held-out split. Every figure carries its n and a 95% interval (``graft.stats``).

Images are read through the runtime's own preprocessing and streamed in
batches: pixels are kept in memory only while they fit in ``IN_MEMORY_BYTES``,
so checking 100k images needs no more memory than 1k (only the (N, classes)
probabilities are kept). Every check runs the exported file through the
runtime engines: what ships is what is verified.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from graft import bundle, stats
from graft.errors import ExportError

BATCH = 64
IN_MEMORY_BYTES = 512 * 1024 * 1024  # decoded pixels kept between passes up to this size
MAX_IMAGES = 2000                     # agreement images past which a seeded sample is used
UNLABELED = -1


class CheckImages:
    """The images a check runs on, their labels (-1: none) and the Keras model's probabilities.

    Args:
        bundle_dir: the bundle.
        data_root: the dataset's new root if it moved since the build.
        extra: more folders, files or lists of images, for agreement only (labels not needed).
        limit: at most this many images (a seeded sample past it, held-out images first).
        seed: the sample's seed.
        split: the split accuracy is measured on ('test'; falls back to val, then train).
    """

    def __init__(self, bundle_dir: str | Path, data_root: str | Path | None = None, extra=(),
                 limit: int | None = MAX_IMAGES, seed: int = 0, split: str = "test"):
        self.bundle_dir = Path(bundle_dir)
        self.manifest = bundle.read_manifest(bundle_dir)
        self.data_root = data_root
        labels = self.manifest["labels"]
        rows = bundle.read_splits(bundle_dir)["samples"]
        _, self.split = bundle.held_out_rows(bundle_dir, split)
        unknown = sorted({row["label"] for row in rows} - set(labels))
        if unknown:
            raise ExportError(f"{bundle_dir}: splits.json names label {unknown[0]!r}, which graft.json "
                              "does not have; the two files are from different builds, rebuild the bundle")
        if data_root is not None:
            check_data_root(Path(data_root), rows)
        items = [(bundle.sample_file(row, data_root), labels.index(row["label"]), row["split"] == self.split)
                 for row in rows]
        extra_files = extra_images(extra)
        items += [(Path(path), UNLABELED, False) for path in extra_files]
        self.usable = len(items)
        items = _sample(items, limit, seed)
        self.files = [item[0] for item in items]
        self.y = np.array([item[1] for item in items], dtype=np.int64)
        self.held = np.array([item[2] for item in items], dtype=bool)
        self.seed, self.limit = seed, limit
        self.extra = sum(1 for item in items if item[1] == UNLABELED)
        height, width = self.manifest["preprocessing"]["size"]
        self._fits = len(self.files) * height * width * 3 <= IN_MEMORY_BYTES
        self._cached: list[np.ndarray] | None = None  # set once one pass has decoded every image
        self._reference: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.files)

    @property
    def sampled(self) -> bool:
        """Whether the check runs on a sample of the usable images (past ``limit``)."""
        return len(self) < self.usable

    def describe(self) -> dict:
        """What the check ran on, for graft.json and the reports."""
        return {"images": len(self), "usable": self.usable, "extra": self.extra, "sampled": self.sampled, "seed": self.seed, "split": self.split,
                "test_images": int(self.held.sum())}

    def batches(self, size: int = BATCH) -> Iterator[np.ndarray]:
        """uint8 pixel batches (n, H, W, 3), in order; decoded once when they fit in memory."""
        if self._cached is not None:
            yield from self._cached
            return
        decoded = []
        for start in range(0, len(self.files), size):
            pixels = load_files(self.files[start:start + size], self.manifest)
            if self._fits:
                decoded.append(pixels)
            yield pixels
        if self._fits:  # only a complete pass is kept
            self._cached = decoded

    def sample(self, count: int) -> np.ndarray:
        """The first ``count`` images (for speed measurements)."""
        return load_files(self.files[:count], self.manifest)

    def reference(self, model=None) -> np.ndarray:
        """The Keras model's probabilities (N, C), computed once, batch by batch."""
        if self._reference is None:
            model = model or load_keras(self.bundle_dir)
            outputs = [np.asarray(model.predict_on_batch(pixels.astype(np.float32)), dtype=np.float32)
                       for pixels in self.batches()]
            classes = len(self.manifest["labels"])
            self._reference = np.concatenate(outputs) if outputs else np.zeros((0, classes), np.float32)
        return self._reference


def _sample(items: list, limit: int | None, seed: int) -> list:
    """All items, or a seeded sample of ``limit`` of them: held-out first, then the rest, each shuffled."""
    if not limit or len(items) <= limit:
        return items
    order = [items[i] for i in np.random.default_rng(seed).permutation(len(items))]
    return ([item for item in order if item[2]] + [item for item in order if not item[2]])[:limit]


def check_data_root(root: Path, rows: list[dict]) -> None:
    """``--data`` must be the dataset's (moved) root: class folders holding the bundle's images."""
    if not root.is_dir():
        raise ExportError(f"{root}: --data is not a folder; pass the dataset's root (one sub-folder per class)")
    if rows and not any(Path(root, row["path"]).is_file() for row in rows[:200]):
        from graft.runtime.inputs import IMAGE_SUFFIXES

        loose = [p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
        if loose:
            raise ExportError(f"{root}: images without class folders; accuracy needs labels (DATA/<label>/...), "
                              f"so --data must be the dataset's root; to measure agreement on these "
                              f"images too, pass --agreement-data {root}")
        raise ExportError(f"{root}: none of the bundle's images are under this folder; --data is the "
                          "dataset's root as it was given to `graft build`, after a move")


def extra_images(extra) -> list[str]:
    """The image files of ``--agreement-data`` folders, files or lists."""
    if not extra:
        return []
    from graft.runtime.inputs import expand_inputs

    found = []
    for item in extra:
        if not Path(item).exists():
            raise ExportError(f"{item}: --agreement-data does not exist")
        files = [path for path in expand_inputs([item]) if Path(path).is_file()]
        if not files:
            raise ExportError(f"{item}: --agreement-data holds no image files")
        found += files
    return list(dict.fromkeys(found))


def load_files(files: list[Path], manifest: dict) -> np.ndarray:
    """uint8 pixels (N, H, W, 3) through the runtime's preprocessing; a file that cannot be read
    is an error naming it (the check must run on the images it says it ran on)."""
    from graft.runtime.preprocess import load_pixels

    pixels = []
    for path in files:
        if not Path(path).is_file():
            raise ExportError(f"{path}: an image of the check is missing; if the dataset moved, "
                              "pass --data DATA (its new root)")
        try:
            pixels.append(load_pixels(path, manifest["preprocessing"]))
        except Exception as exc:
            raise ExportError(f"{path}: cannot be read for the check ({exc}); remove it or fix it") from None
    if not pixels:
        height, width = manifest["preprocessing"]["size"]
        return np.zeros((0, height, width, 3), np.uint8)
    return np.stack(pixels)


def load_rows(rows: list[dict], manifest: dict, data_root: str | Path | None) -> np.ndarray:
    """uint8 pixels of splits.json rows (re-rooted at ``data_root`` when the dataset moved)."""
    return load_files([bundle.sample_file(row, data_root) for row in rows], manifest)


def load_keras(bundle_dir: str | Path):
    """The bundle's model.keras (safe_mode, not compiled)."""
    import keras

    path = Path(bundle_dir, bundle.KERAS_NAME)
    if not path.is_file():
        raise ExportError(f"{bundle_dir}: no {bundle.KERAS_NAME}; build the bundle first")
    return keras.saving.load_model(path, safe_mode=True, compile=False)


def run_file(path: Path, images: CheckImages, threads: int | None = None, batch: int = 32) -> np.ndarray:
    """The exported file's probabilities (N, C) on the check's images, through the runtime."""
    from graft.runtime.engines import open_engine, run_batched

    engine = open_engine(path, device="cpu", threads=threads)
    outputs = [out for pixels in images.batches() for out in run_batched(engine, pixels, batch)]
    classes = len(images.manifest["labels"])
    return np.concatenate(outputs) if outputs else np.zeros((0, classes), np.float32)


def check_file(path: Path, images: CheckImages, threads: int | None = None, batch: int = 32) -> dict:
    """Run an exported file on the check's images and measure it against Keras
    (``budgets.judge`` then applies a budget)."""
    candidate = run_file(path, images, threads, batch)
    return {"reference": "keras", **images.describe(), **measure(images.reference(), candidate, images)}


def measure(reference: np.ndarray, candidate: np.ndarray, images: CheckImages) -> dict:
    """Agreement (all images) and accuracy (held-out, labelled images), each with n and a 95% interval."""
    if reference.shape != candidate.shape:
        raise ExportError(f"output shapes differ: reference {reference.shape}, export {candidate.shape}")
    ours, theirs = reference.argmax(1), candidate.argmax(1)
    n, agree = len(reference), int((ours == theirs).sum())
    result = {"images": n, "top1_agreement": agree / n if n else 1.0, "agreement_interval": list(stats.wilson(agree, n)),
              "max_abs_diff": float(np.abs(reference - candidate).max()) if n else 0.0}
    test = images.held & (images.y != UNLABELED)
    y = images.y[test]
    keras_right, export_right = ours[test] == y, theirs[test] == y
    m = int(test.sum())
    drop, low, high = stats.paired_difference(
        int((keras_right & export_right).sum()), int((keras_right & ~export_right).sum()),
        int((~keras_right & export_right).sum()), int((~keras_right & ~export_right).sum()))
    result.update(
        test_images=m, accuracy=float(export_right.mean()) if m else 0.0,
        accuracy_interval=list(stats.wilson(int(export_right.sum()), m)),
        keras_accuracy=float(keras_right.mean()) if m else 0.0,
        keras_accuracy_interval=list(stats.wilson(int(keras_right.sum()), m)),
        accuracy_drop=drop, drop_interval=[low, high], accuracy_judged=m >= stats.SMALL_N)
    return result
