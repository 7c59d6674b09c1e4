"""Frozen-backbone features, computed once per image and kept on disk in shards.

A vector's cache key covers the backbone (``Backbone.cache_key``: architecture,
cut layer, weights hash, input size, versions), the extractor (onnxruntime with
one ONNX file, or Keras), the preprocessing contract and the image's content,
so renaming a file or adding new ones never recomputes the rest.

The pipeline is the one ``graft predict`` uses: files are read, hashed and
decoded by the runtime's decode pool a few batches ahead of the model, and a
file that cannot be read or decoded is reported with its reason, never fatal.
This module imports no TensorFlow: Ray workers use it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from graft.builder.data import Sample
from graft.builder.shards import ShardStore, ShardWriter
from graft.errors import BackboneError, ImageError
from graft.progress import Task
from graft.runtime.pipeline import decode_pool
from graft.runtime.preprocess import load_pixels

AHEAD_BATCHES = 3  # batches being read and decoded while the model runs one


def default_cache_dir() -> Path:
    """The graft cache (features, converted backbones and weights): ``$GRAFT_CACHE`` or ``~/.cache/graft``."""
    return Path(os.environ.get("GRAFT_CACHE") or Path.home() / ".cache" / "graft")


class FeatureCache:
    """One namespace of cached vectors: ``<root>/features/<backbone key>/<extractor tag>/``."""

    def __init__(self, root: Path, backbone_key: str, contract: dict, extractor_tag: str):
        self.dir = Path(root) / "features" / backbone_key / extractor_tag
        self.store = ShardStore(self.dir)
        self.salt = json.dumps(contract, sort_keys=True).encode()

    def key(self, content_sha: str, view: str = "") -> str:
        """The key of an image's vector; ``view`` names a derived view of it (an augmentation)."""
        extra = f"\nview:{view}".encode() if view else b""
        return hashlib.sha256(self.salt + content_sha.encode() + extra).hexdigest()


@dataclass(frozen=True)
class Item:
    """One vector to compute: its cache key and how to get its pixels (H, W, 3), 0..255.

    ``load`` runs in the decode pool and raises ImageError for an unusable image.
    """

    key: str
    load: Callable[[], np.ndarray]


def read_bytes(path: str | os.PathLike) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: is a directory, not an image") from None
    except OSError as exc:
        raise ImageError(f"{path}: cannot read ({exc.strerror})") from None


def content_sha(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes (ImageError when it cannot be read)."""
    return hashlib.sha256(read_bytes(path)).hexdigest()


def read_pixels(path: str | os.PathLike, sha: str, contract: dict) -> np.ndarray:
    """Decode ``path`` as ``contract`` says, after checking its bytes still hash to ``sha``."""
    data = read_bytes(path)
    if hashlib.sha256(data).hexdigest() != sha:
        raise ImageError(f"{path}: changed while the build was reading it; build again")
    return load_pixels(data, contract)


def reason(exc: Exception) -> str:
    """What ``skipped`` says about a file: the error without its leading path."""
    if isinstance(exc, ImageError):
        return " ".join(str(exc).split(": ", 1)[-1].split())
    return f"{type(exc).__name__}: {exc}"


def in_order(pool: ThreadPoolExecutor, fn: Callable, items: Iterable, ahead: int) -> Iterator[tuple]:
    """Yield ``(item, result or exception)`` in order, with at most ``ahead`` items in flight."""
    pending: deque[tuple[object, Future]] = deque()

    def outcome(item, future):
        try:
            return item, future.result()
        except Exception as exc:  # a bad file must never stop the build
            return item, exc

    for item in items:
        pending.append((item, pool.submit(fn, item)))
        if len(pending) >= ahead:
            yield outcome(*pending.popleft())
    while pending:
        yield outcome(*pending.popleft())


def fingerprint(samples: Sequence[Sample], threads: int | None = None,
                task: Task | None = None) -> list[str | Exception]:
    """The content sha256 of every sample (or why it cannot be read), read in threads."""
    task = task or Task()
    found: list[str | Exception] = []
    pool = decode_pool(threads)
    try:
        for _, result in in_order(pool, lambda s: content_sha(s.path), samples, 256):
            found.append(result)
            task.advance()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return found


def extract_items(items: Iterable[Item], run: Callable[[np.ndarray], np.ndarray], writer: ShardWriter, *,
                  batch_size: int = 32, threads: int | None = None,
                  task: Task | None = None) -> dict[str, str]:
    """Compute and store the vector of every item; return ``{key: reason}`` for those that failed.

    Items are loaded in the decode pool ``AHEAD_BATCHES`` batches ahead of ``run``
    (the extractor: pixels (N, H, W, 3) float32 -> features (N, D)), and the
    vectors go to ``writer`` as they come, so memory holds a few batches and one
    shard, whatever the number of items.
    """
    task = task or Task()
    failed: dict[str, str] = {}
    keys: list[str] = []
    pixels: list[np.ndarray] = []

    def flush():
        if pixels:
            writer.add(keys, run(np.stack(pixels).astype(np.float32)))
            task.advance(len(pixels))
            keys.clear()
            pixels.clear()

    pool = decode_pool(threads)
    try:
        for item, result in in_order(pool, lambda it: it.load(), items, AHEAD_BATCHES * batch_size):
            if isinstance(result, Exception):
                failed[item.key] = reason(result)
                task.advance()
                continue
            keys.append(item.key)
            pixels.append(result)
            if len(pixels) >= batch_size:
                flush()
        flush()
        writer.close()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return failed


MIN_SPREAD = 1e-6  # features that vary less than this across images carry no usable signal


def feature_spread(features, chunk: int = 1024) -> float:
    """How much features vary across images: the mean over dimensions of their standard deviation.

    ``features`` is an (N, D) array or ``Rows``; rows are read ``chunk`` at a time and
    merged (Chan et al.), so memory holds one chunk.
    """
    total = len(features)
    if total < 2:
        return float("nan")
    count, mean, m2 = 0, None, None
    for start in range(0, total, chunk):
        block = _take(features, np.arange(start, min(start + chunk, total))).astype(np.float64)
        n, block_mean = len(block), block.mean(axis=0)
        block_m2 = ((block - block_mean) ** 2).sum(axis=0)
        if mean is None:
            count, mean, m2 = n, block_mean, block_m2
            continue
        delta = block_mean - mean
        mean = mean + delta * n / (count + n)
        m2 = m2 + block_m2 + delta ** 2 * count * n / (count + n)
        count += n
    return float(np.sqrt(m2 / count).mean())


def _take(features, positions: np.ndarray) -> np.ndarray:
    return features[positions] if isinstance(features, np.ndarray) else features.take(positions)


def check_spread(features, backbone: str) -> float:
    """Refuse features that barely vary across images (a backbone that knows nothing); return the spread."""
    spread = feature_spread(features)
    if len(features) > 1 and not spread >= MIN_SPREAD:
        raise BackboneError(
            f"the frozen {backbone} features barely vary across images: their spread is {spread:.1e} "
            f"over {len(features)} images (pretrained backbones give about 1e-2 or more), so a head "
            "cannot learn from them; use pretrained weights (--weights imagenet, or a backbone whose "
            "weights install with graft such as efficientnet_lite0) or cut the source model at "
            "another layer (--cut-layer)")
    return spread
