"""Backbones: the frozen source of knowledge, from the registry or any saved Keras model.

Every feature extractor built here takes RGB pixels in 0..255 named ``pixels``
and returns pooled features (N, D); a backbone's own normalisation is a layer
inside the graph, so exported models need nothing from their callers but
pixels. ``load_backbone`` is the one entry point.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from graft.builder.backbones.registry import REGISTRY, BackboneSpec
from graft.errors import BackboneError

# Bump when the code that turns images into features changes what it computes.
FEATURES_VERSION = 2

__all__ = ["Backbone", "BackboneSpec", "REGISTRY", "load_backbone", "is_source_model", "FEATURES_VERSION"]


@dataclass
class Backbone:
    model: object           # keras.Model: pixels (N, H, W, 3) in 0..255 -> features (N, D)
    info: dict              # recorded in graft.json under "backbone"
    image_size: int
    architecture: str = ""  # what defines the graph: registry spec, or the source file's sha256

    @property
    def cache_key(self) -> str:
        """Identifies everything the features depend on but the image and its preprocessing
        (the feature cache adds those): architecture, cut, weights, size, Keras, graft's code."""
        import keras

        parts = [self.info["name"], self.architecture, str(self.info.get("cut_layer")),
                 self.info["weights"]["sha256"], str(self.image_size), keras.__version__,
                 f"features-v{FEATURES_VERSION}"]
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]


def is_source_model(name: str) -> bool:
    return name.endswith(".keras") or Path(name).is_file()


def load_backbone(name: str, weights: str | None = None, image_size: int | None = None,
                  cut_layer: str | None = None, cache_dir: str | Path | None = None) -> Backbone:
    """Build a frozen feature extractor from a registry name or a saved .keras model.

    Args:
        name: a registered backbone (see ``REGISTRY``) or the path of a .keras model.
        weights: 'imagenet', 'none' or a weights file (registered backbones); a file
            or None (its own weights) for a source model.
        image_size: square input size (default: the backbone's native size).
        cut_layer: the layer of a source model whose output becomes the features, or the
            block end of an EfficientNet-Lite backbone (``efficientnet_lite.cut_names``; default ``top``).
        cache_dir: the graft cache, where converted weights are kept.

    Returns:
        A Backbone whose model is frozen (no trainable weights).
    """
    if is_source_model(name):
        from graft.builder.backbones.source_model import from_source_model

        return from_source_model(Path(name), weights, image_size, cut_layer)
    if name not in REGISTRY:
        raise BackboneError(f"unknown backbone {name!r}; allowed: {', '.join(REGISTRY)}, "
                            "or the path of a saved .keras model")
    spec = REGISTRY[name]
    if cut_layer and not spec.named_cuts:
        raise BackboneError("--cut-layer applies to a source .keras model or an EfficientNet-Lite "
                            f"backbone (block ends such as block5c), not to {name!r}")
    cut = {"cut_layer": cut_layer} if cut_layer else {}
    return spec.load()(name, spec, weights or spec.default_weights, image_size, cache_dir, **cut)
