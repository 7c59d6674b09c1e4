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
from graft.errors import ImageError
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
            batch_size: int = 32, progress=None) -> Extracted:
    """Features for every decodable sample; undecodable ones are listed in ``skipped``."""
    vectors: dict[int, np.ndarray] = {}
    shas: dict[int, str] = {}
    skipped, pending = [], []  # pending: (index, cache key, pixels)
    hits = 0
    task = progress.add_task("features", total=len(samples), status="") if progress else None

    def flush():
        if not pending:
            return
        batch = np.stack([p for _, _, p in pending]).astype(np.float32)
        out = np.asarray(model.predict_on_batch(batch), dtype=np.float32)
        for (index, key, _), vector in zip(pending, out):
            cache.put(key, vector)
            vectors[index] = vector
        if progress:
            progress.advance(task, len(pending))
        pending.clear()

    for index, sample in enumerate(samples):
        try:
            data = _read(sample.path)
            pixels = load_pixels(data, contract)
        except ImageError as exc:
            reason = str(exc).split(": ", 1)[-1]
            skipped.append({"path": sample.rel, "label": sample.label, "reason": reason})
            if progress:
                progress.advance(task)
            continue
        shas[index] = hashlib.sha256(data).hexdigest()
        key = cache.key(shas[index])
        cached = cache.get(key)
        if cached is not None:
            vectors[index] = cached
            hits += 1
            if progress:
                progress.advance(task)
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
