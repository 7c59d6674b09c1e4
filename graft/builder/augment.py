"""Augmentation: Keras preprocessing layers, applied with explicit seeds, in training only.

Random horizontal flip (optional: some label sets are not mirror-invariant),
zoom with a shift (a random crop), a small rotation, brightness and contrast.
The layers run on uint8 pixels outside the model, so they never reach
``model.keras`` or an exported graph. Every draw comes from an explicit seed:

- **fine-tuning** augments each training batch at once, seeded by
  ``(seed, epoch, batch)``; the batches themselves are drawn from the seed, so
  a build is reproducible. (A 224 px image costs about 4 ms in a batch of
  32 on two cores, about 6 ms on its own.)
- **cached views** for the head stage (``--augment-views K``): view ``k`` of
  an image is seeded by the image's sha256 and ``k`` alone, so it is the same
  in every build, whatever the batch or thread that makes it. Its features are
  cached under a key that names the settings' digest (settings that change
  never reuse old views) and are computed by the build's own extractor.
  Views are made for training images only, never for validation or test.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import asdict, dataclass, fields

import numpy as np

from graft.builder.features import Item, read_pixels
from graft.errors import GraftError

AUGMENT_VERSION = 1  # bump when the same settings would draw different images
FILL = "reflect"     # how zoom, shift and rotation fill the border


@dataclass(frozen=True)
class AugmentSpec:
    """Augmentation strengths; 0 (or ``flip=False``) turns a transform off.

    Attributes:
        flip: random horizontal flips.
        zoom: zoom in or out by up to this fraction, and shift by up to half of it.
        rotation: rotate by up to this fraction of a full turn (0.03: about 11 degrees).
        brightness: add up to this fraction of 255.
        contrast: scale the contrast by 1 +- this.
    """

    flip: bool = True
    zoom: float = 0.1
    rotation: float = 0.03
    brightness: float = 0.1
    contrast: float = 0.1

    LIMITS = {"zoom": 0.5, "rotation": 0.25, "brightness": 1.0, "contrast": 1.0}

    @classmethod
    def of(cls, options) -> "AugmentSpec":
        """The spec named by a ``BuildOptions`` (its flip, zoom, rotation, brightness, contrast)."""
        return cls(**{f.name: getattr(options, f.name) for f in fields(cls)})

    def check(self) -> "AugmentSpec":
        """Raise GraftError for a strength out of range; return self."""
        if not isinstance(self.flip, bool):
            raise GraftError(f"--flip must be true or false; received {self.flip!r}")
        for name, high in self.LIMITS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= high:
                raise GraftError(f"--{name} must be a number in 0..{high}; received {value!r}")
        return self

    @property
    def identity(self) -> bool:
        return not self.flip and not any(getattr(self, name) for name in self.LIMITS)

    def record(self) -> dict:
        """The settings as graft.json records them."""
        return {**asdict(self), "fill": FILL, "version": AUGMENT_VERSION}

    def digest(self) -> str:
        """Names these settings in a view's cache key (with the Keras version that draws them)."""
        import keras

        text = json.dumps({**self.record(), "keras": keras.__version__}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def layers(self) -> list:
        """The Keras preprocessing layers, in the order they apply."""
        from keras import layers

        found = [layers.RandomFlip("horizontal", name="augment_flip")] if self.flip else []
        if self.rotation:
            found.append(layers.RandomRotation(self.rotation, fill_mode=FILL, name="augment_rotation"))
        if self.zoom:
            found += [layers.RandomZoom((-self.zoom, self.zoom), fill_mode=FILL, name="augment_zoom"),
                      layers.RandomTranslation(self.zoom / 2, self.zoom / 2, fill_mode=FILL,
                                               name="augment_shift")]
        if self.brightness:
            found.append(layers.RandomBrightness(self.brightness, value_range=(0, 255),
                                                 name="augment_brightness"))
        if self.contrast:
            found.append(layers.RandomContrast(self.contrast, value_range=(0, 255),
                                              name="augment_contrast"))
        return found


def seed_of(*parts) -> int:
    """A 31-bit seed drawn from ``parts`` (hashed, so nearby values give unrelated seeds)."""
    digest = hashlib.sha256("\n".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


class Augmenter:
    """Applies a spec's layers to uint8 pixels, (H, W, 3) or (N, H, W, 3), with an explicit seed.

    One traced TensorFlow function (about 3x faster than eager calls); the
    seed is written into its generator first, so the result depends only on the
    pixels and the seed. Calls are serialised (threads share the generator).
    """

    def __init__(self, spec: AugmentSpec):
        import keras
        import tensorflow as tf

        self.spec = spec
        self.layers = spec.layers()
        generator = keras.random.SeedGenerator(0)
        self._dtype = generator.state.dtype
        self._lock = threading.Lock()

        @tf.function(input_signature=[tf.TensorSpec((None, None, None, 3), tf.uint8),
                                      tf.TensorSpec((2,), self._dtype)])
        def run(pixels, seed):
            generator.state.assign(seed)
            x = tf.cast(pixels, tf.float32)
            for layer in self.layers:
                drawn = layer.get_random_transformation(x, training=True, seed=generator)
                x = layer.transform_images(x, drawn, training=True)
            return tf.cast(tf.clip_by_value(tf.round(x), 0, 255), tf.uint8)

        self._run = run

    def __call__(self, pixels: np.ndarray, seed: int) -> np.ndarray:
        import tensorflow as tf

        pixels = np.asarray(pixels, np.uint8)
        if not self.layers:
            return pixels
        batch = pixels[None] if pixels.ndim == 3 else pixels
        with self._lock:
            out = self._run(tf.constant(batch), tf.constant([seed, 0], self._dtype)).numpy()
        return out[0] if pixels.ndim == 3 else out


def view_name(digest: str, k: int) -> str:
    """What a view's cache key adds to its image's (``FeatureCache.key(sha, view=...)``)."""
    return f"{digest}:{k}"


def _view_loader(path, sha: str, contract: dict, augmenter: Augmenter, k: int):
    return lambda: augmenter(read_pixels(path, sha, contract), seed_of(sha, k))


def training_rows(ext, positions: np.ndarray, y: np.ndarray, contract: dict, spec: AugmentSpec,
                  views: int, *, batch_size: int = 32, threads: int | None = None, progress=None):
    """The training rows for the head stage: every training image and ``views`` views of each.

    Views the cache lacks are made in the decode pool and extracted by the
    build's extractor into its namespace (``FeatureSet.rows_for``); a view that
    fails (its file changed since it was read, say) is left out and counted.

    Args:
        ext: the build's ``FeatureSet``.
        positions: the training images' positions in ``ext.samples``.
        y: every usable sample's label index.
        contract: the preprocessing contract.
        spec, views: the augmentation and how many views per image.
        progress: a ``Progress`` to show the views on (optional).

    Returns:
        (rows, labels, record): the originals' rows then the views', their labels,
        and what graft.json records about the views.
    """
    started = time.perf_counter()
    augmenter, digest = Augmenter(spec), spec.digest()
    items, owners = [], []
    for p in positions:
        sample, sha = ext.samples[p], ext.content_sha[p]
        for k in range(views):
            items.append(Item(ext.cache.key(sha, view=view_name(digest, k)),
                              _view_loader(sample.path, sha, contract, augmenter, k)))
            owners.append(p)
    hits = int((ext.cache.store.index().find([item.key for item in items]) >= 0).sum())
    task = progress.task("views", total=len(items) - hits, unit="img") if progress else None
    _, failed = ext.rows_for(items, batch_size, threads, task)
    if task is not None:
        task.finish()
    kept = [(item.key, owner) for item, owner in zip(items, owners) if item.key not in failed]
    keys = [ext.keys[p] for p in positions] + [key for key, _ in kept]
    labels = np.concatenate([y[positions], y[np.array([o for _, o in kept], np.int64)]])
    record = {"augment_views": views, "augmentation": spec.record(), "digest": digest,
              "views": {"made": len(items) - len(failed), "cache_hits": hits,
                        "extracted": len(items) - hits - len(failed), "failed": len(failed),
                        "seconds": round(time.perf_counter() - started, 2)}}
    return ext.cache.store.index().rows(keys), labels, record


def head_rows(ext, train: np.ndarray, y: np.ndarray, contract: dict, options, progress=None):
    """The head stage's training rows and labels: the training images' cached features, and
    ``options.augment_views`` views of each when asked; the third value is the views' record."""
    if not options.augment_views:
        return ext.rows.subset(train), y[train], None
    return training_rows(ext, train, y, contract, AugmentSpec.of(options), options.augment_views,
                         batch_size=options.batch_size, threads=options.decode_threads,
                         progress=progress)
