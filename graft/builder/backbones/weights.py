"""Weights: loading a user's weights file into a model, and fingerprints of weights."""

from __future__ import annotations

import hashlib
from pathlib import Path

from graft.errors import WeightsError, first_line


def load_weights_file(model, weights: str) -> None:
    """Load a Keras weights file (.weights.h5 / .h5) into ``model``; WeightsError if it does not fit."""
    path = Path(weights)
    if not path.is_file():
        raise WeightsError(f"--weights {weights}: no such file; pass a .weights.h5 / .h5 file, "
                           "or 'imagenet'")
    try:
        model.load_weights(str(path))
    except Exception as exc:
        raise WeightsError(f"{path}: cannot load these weights into the backbone "
                           f"({first_line(exc, 200)})") from exc


def weights_sha256(model) -> str:
    """sha256 over a model's weight arrays, in order: identifies what the model knows."""
    digest = hashlib.sha256()
    for array in model.get_weights():
        digest.update(array.tobytes())
    return digest.hexdigest()
