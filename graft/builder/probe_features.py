"""The probe's candidates and their features: one forward pass per backbone and resolution.

A *family* is a backbone at one resolution; its feature model outputs the
pooled features of every cut the probe tries, concatenated (``cuts.features_model``
for EfficientNet-Lite, the same for a saved .keras source model). Its features
are extracted by the build's own extraction (onnxruntime on the converted
model, parity-checked against Keras, cached in shards), so a second probe of
the same images computes nothing, and each cut's slice is one candidate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from graft.builder.backbones import Backbone, is_source_model
from graft.builder.backbones.cuts import TOP
from graft.errors import BackboneError, first_line


@dataclass
class Family:
    """One backbone at one resolution, and the cuts its feature model outputs (in order)."""

    backbone: str                  # registry name or the .keras path
    image_size: int
    cuts: list[str]
    dims: list[int] = field(default_factory=list)
    model: Backbone | None = None

    def slices(self) -> dict[str, slice]:
        ends = np.cumsum([0] + self.dims)
        return {cut: slice(int(a), int(b)) for cut, a, b in zip(self.cuts, ends[:-1], ends[1:])}


def native_size(backbone: str) -> int | None:
    """A registered backbone's native input size; a source model's fixed one (None: any)."""
    if is_source_model(backbone):
        return None
    from graft.builder.backbones.registry import REGISTRY

    return REGISTRY[backbone].size


def load_family(family: Family, cache_dir: Path) -> Family:
    """Build the family's feature model (Keras); fills ``dims`` and ``model``."""
    if is_source_model(family.backbone):
        backbone = _source_family(Path(family.backbone), family)
    else:
        backbone = _lite_family(family, cache_dir)
    family.model = backbone
    return family


def _lite_family(family: Family, cache_dir: Path) -> Backbone:
    from graft.builder.backbones import cuts as cutmod
    from graft.builder.backbones import efficientnet_lite as lite
    from graft.builder.backbones.lite_weights import layout

    for cut in family.cuts:
        lite.check_cut(family.backbone, cut)
    base = lite.build_model(family.backbone, family.image_size, include_top=False, cache_dir=cache_dir)
    model = cutmod.features_model(base, family.cuts, f"{family.backbone}_cuts")
    family.dims = [int(model.get_layer(f"pool_{cut}").output.shape[-1]) for cut in family.cuts]
    info = {"name": family.backbone, "source": "graft probe", "cut_layer": "+".join(family.cuts),
            "feature_dim": sum(family.dims), "weights": lite.weights_source(family.backbone)}
    return Backbone(model, info, family.image_size, f"{family.backbone}:cuts:{layout(model)[:16]}")


def usable_layers(source) -> list:
    """The layers of a source model whose output a head can use: (N, D) or (N, H, W, C)."""
    from graft.builder.backbones.source_model import output_in

    found = []
    for layer in source.layers[1:]:
        try:
            shape = output_in(source, layer).shape
        except (AttributeError, ValueError):
            continue
        if len(shape) in (2, 4) and shape[-1]:
            found.append(layer)
    return found


def source_cuts(path: Path, requested: list[str] | None) -> list[str]:
    """The cuts to try in a source model: those asked for, else its default feature layer.

    Raises:
        BackboneError: the model has no layer a head can use, or lacks a requested one;
            the message lists the layers it has.
    """
    import keras

    from graft.builder.backbones.source_model import cut

    try:
        source = keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as exc:
        raise BackboneError(f"{path}: cannot load the source model ({first_line(exc, 200)})") from exc
    usable = {layer.name for layer in usable_layers(source)}
    described = ", ".join(f"{layer.name} {tuple(layer.output.shape)}" for layer in source.layers)
    if not usable:
        raise BackboneError(f"{path}: no layer outputs (N, D) or (N, H, W, C) features, so there "
                            f"is no usable cut; its layers: {described}")
    wanted = requested or [cut(source, None, path).name]
    bad = [name for name in wanted if name not in usable]
    if bad:
        raise BackboneError(f"{path}: {', '.join(bad)} is not a usable cut (it must output (N, D) "
                            f"or (N, H, W, C)); usable: {', '.join(sorted(usable))}; all layers: "
                            f"{described}")
    return wanted


def _source_family(path: Path, family: Family) -> Backbone:
    """The source model cut at every cut of the family at once, each output pooled as
    ``source_model.from_source_model`` pools one (a build of one cut computes the same)."""
    import keras

    from graft.builder.backbones.source_model import from_source_model, output_in

    first = from_source_model(path, None, family.image_size, family.cuts[0])  # checks and records
    source = keras.saving.load_model(path, safe_mode=True, compile=False)
    inner = keras.Model(source.inputs, [output_in(source, source.get_layer(c)) for c in family.cuts],
                        name="source_cut")
    inputs = keras.Input((family.image_size, family.image_size, 3), name="pixels")
    outputs = inner(inputs, training=False)
    outputs = [keras.layers.GlobalAveragePooling2D(name=f"pool_{i}")(o) if len(o.shape) == 4 else o
               for i, o in enumerate(outputs)]
    family.dims = [int(out.shape[-1]) for out in outputs]
    joined = outputs[0] if len(outputs) == 1 else keras.layers.Concatenate(name="cuts")(outputs)
    model = keras.Model(inputs, joined, name="source_cuts")
    model.trainable = False
    info = {**first.info, "cut_layer": "+".join(family.cuts), "feature_dim": sum(family.dims)}
    return Backbone(model, info, family.image_size, f"{first.architecture}:cuts:{'+'.join(family.cuts)}")


def family_size(backbone: str, requested: int) -> int:
    """The size a family runs at: a source model with a fixed input keeps its own."""
    if not is_source_model(backbone):
        return requested
    import keras

    source = keras.saving.load_model(backbone, safe_mode=True, compile=False)
    height = tuple(source.inputs[0].shape)[1]
    return int(height) if height else requested


def label(backbone: str, size: int, cut: str) -> str:
    """A candidate's short name: ``efficientnet_lite0@128/block5c``."""
    name = Path(backbone).name if is_source_model(backbone) else backbone
    return f"{name}@{size}/{cut or TOP}"
