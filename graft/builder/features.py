"""Frozen-backbone features, computed once per image and cached on disk.

A cached vector is keyed by the backbone (architecture, cut layer, weights
hash, input size) and by the image's content and preprocessing, so renaming a
file or adding new ones never recomputes the rest.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from graft.bundle import atomic_path
from graft.builder.data import Sample
from graft.errors import BackboneError, ImageError
from graft.progress import Progress
from graft.runtime.preprocess import load_pixels


def default_cache_dir() -> Path:
    return Path(os.environ.get("GRAFT_CACHE") or Path.home() / ".cache" / "graft")


@dataclass
class Extracted:
    features: np.ndarray          # (N, D) float32 for the usable samples, in order
    samples: list[Sample]         # the usable samples
    skipped: list[dict]           # {"path", "label", "reason"}
    content_sha: list[str]        # per usable sample
    cache_hits: int


class FeatureCache:
    def __init__(self, root: Path, backbone_key: str, contract: dict):
        self.dir = Path(root) / "features" / backbone_key
        self.dir.mkdir(parents=True, exist_ok=True)
        self.salt = json.dumps(contract, sort_keys=True).encode()

    def key(self, content_sha: str) -> str:
        return hashlib.sha256(self.salt + content_sha.encode()).hexdigest()

    def get(self, key: str) -> np.ndarray | None:
        path = self.dir / f"{key}.npy"
        try:
            return np.load(path) if path.exists() else None
        except (OSError, ValueError):
            return None  # a damaged entry is recomputed

    def put(self, key: str, vector: np.ndarray) -> None:
        with atomic_path(self.dir / f"{key}.npy") as tmp, open(tmp, "wb") as fh:
            np.save(fh, vector)


def extract(model, samples: list[Sample], contract: dict, cache: FeatureCache,
            batch_size: int = 32, progress: Progress | None = None) -> Extracted:
    """Features for every decodable sample; undecodable ones are listed in ``skipped``."""
    vectors: dict[int, np.ndarray] = {}
    shas: dict[int, str] = {}
    skipped, pending = [], []  # pending: (index, cache key, pixels)
    hits = 0
    task = (progress or Progress(False)).task("features", total=len(samples), unit="img")

    def flush():
        if not pending:
            return
        batch = np.stack([p for _, _, p in pending]).astype(np.float32)
        out = np.asarray(model.predict_on_batch(batch), dtype=np.float32)
        for (index, key, _), vector in zip(pending, out):
            cache.put(key, vector)
            vectors[index] = vector
        task.advance(len(pending))
        pending.clear()

    for index, sample in enumerate(samples):
        try:
            data = _read(sample.path)
            pixels = load_pixels(data, contract)
        except ImageError as exc:
            reason = str(exc).split(": ", 1)[-1]
            skipped.append({"path": sample.rel, "label": sample.label, "reason": reason})
            task.advance()
            continue
        shas[index] = hashlib.sha256(data).hexdigest()
        key = cache.key(shas[index])
        cached = cache.get(key)
        if cached is not None:
            vectors[index] = cached
            hits += 1
            task.advance()
            continue
        pending.append((index, key, pixels))
        if len(pending) >= batch_size:
            flush()
    flush()
    order = sorted(vectors)
    dim = model.output.shape[-1]
    features = np.stack([vectors[i] for i in order]) if order else np.zeros((0, dim), np.float32)
    return Extracted(features, [samples[i] for i in order], skipped, [shas[i] for i in order], hits)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except OSError as exc:
        raise ImageError(f"{path}: cannot read ({exc.strerror})") from None


MIN_SPREAD = 1e-6  # features that vary less than this across images carry no usable signal


def feature_spread(features: np.ndarray) -> float:
    """How much features vary across images: the mean over dimensions of their standard deviation."""
    return float(features.std(axis=0).mean()) if len(features) > 1 else float("nan")


def check_spread(features: np.ndarray, backbone: str) -> float:
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
