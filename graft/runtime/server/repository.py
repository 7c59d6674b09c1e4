"""The model repository: one model file, one bundle, or a folder of ``name/version/``.

* ``model.onnx`` (a self-describing export): one model, version "1", named by
  its manifest's "name" or else the file name.
* a bundle directory: one model, version "1", named by its manifest's "name"
  or else the directory name.
* any other directory: a repository; each ``NAME/VERSION/`` (VERSION all
  digits) holds a bundle or a single ``.onnx`` file. The newest version (the
  largest number) answers requests that name no version.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from graft.bundle import is_bundle, read_manifest
from graft.errors import BundleError
from graft.runtime.classifier import Classifier
from graft.runtime.server.errors import NotFound

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_DATATYPES = {np.dtype(np.float32): "FP32", np.dtype(np.uint8): "UINT8", np.dtype(np.int8): "INT8"}


@dataclass
class ModelEntry:
    """One loaded model version and what the protocol says about it."""

    name: str
    version: str
    classifier: Classifier
    batcher: object = field(default=None, repr=False)  # set by the app at startup

    @property
    def labels(self) -> list[str]:
        return self.classifier.labels

    @property
    def input_name(self) -> str:
        engine = self.classifier.engine
        return getattr(engine, "input_name", None) or self.classifier.manifest.get("input", {}).get("name", "pixels")

    @property
    def output_name(self) -> str:
        return self.classifier.manifest.get("output", {}).get("name") or "probs"

    @property
    def datatype(self) -> str:
        return _DATATYPES.get(np.dtype(self.classifier.engine.input_dtype), "FP32")

    @property
    def input_shape(self) -> list[int]:
        height, width = self.classifier.input_size
        return [-1, height, width, 3]

    @property
    def platform(self) -> str:
        fmt = self.classifier.engine.format or "onnx"
        return "onnxruntime_onnx" if fmt == "onnx" else f"graft_{fmt}"


class Repository:
    """Loaded models by name and version."""

    def __init__(self, models: dict[str, dict[str, ModelEntry]]):
        if not models:
            raise BundleError("the model repository is empty; pass a .onnx file, a bundle, "
                              "or a folder of NAME/VERSION/ bundles")
        self.models = models

    def entries(self) -> list[ModelEntry]:
        return [entry for versions in self.models.values() for entry in versions.values()]

    def versions(self, name: str) -> list[str]:
        return sorted(self._versions(name), key=int)

    def get(self, name: str, version: str | None = None) -> ModelEntry:
        versions = self._versions(name)
        if version is None or version == "":
            return versions[max(versions, key=int)]
        if version not in versions:
            raise NotFound(f"model {name!r} has no version {_short(version)!r}; "
                           f"versions: {', '.join(self.versions(name))}")
        return versions[version]

    def _versions(self, name: str) -> dict[str, ModelEntry]:
        if name not in self.models:
            raise NotFound(f"unknown model {_short(name)!r}; models: {', '.join(sorted(self.models))}")
        return self.models[name]


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def parse_artifacts(artifacts) -> tuple[str | None, dict[str, str]]:
    """``--artifact`` values: 'FORMAT:PRECISION' for every bundle, 'NAME=FORMAT:PRECISION' for one model."""
    default, per_model = None, {}
    for item in artifacts or ():
        name, sep, artifact = item.partition("=")
        if sep:
            per_model[name.strip()] = artifact.strip()
        elif default is not None and default != item:
            raise BundleError(f"--artifact {item}: a second default (the first was {default}); name the "
                              "model it is for as NAME=FORMAT:PRECISION")
        else:
            default = item.strip()
    return default, per_model


def load_repository(path: str | Path, device: str = "auto", model_threads: int | None = None,
                    max_pixels: int | None = None, artifacts=()) -> Repository:
    """Load every model under ``path`` (see the module docstring for the layouts).

    Args:
        path: a model file, a bundle directory, or a folder of ``NAME/VERSION/``.
        device: "auto", "cpu", "cuda", "tensorrt" or "openvino", as ``Classifier.load`` takes it.
        model_threads: ONNX Runtime intra-op (or LiteRT) threads per model; None lets the engine choose.
        max_pixels: the largest image (width x height) each model will decode.
        artifacts: which export of a bundle runs ('FORMAT:PRECISION', or 'NAME=FORMAT:PRECISION'
            for one model); by default each bundle's best verified export.
    """
    path = Path(path)
    default, per_model = parse_artifacts(artifacts)

    def load(p: Path, name: str | None = None) -> Classifier:
        artifact = per_model.get(name, default) if p.is_dir() else per_model.get(name)
        return Classifier.load(p, device=device, model_threads=model_threads, max_pixels=max_pixels,
                               artifact=artifact)

    if not path.exists():
        raise BundleError(f"{path}: no such model file, bundle or repository")
    if path.is_file():
        if default or per_model:
            raise BundleError(f"--artifact picks one export of a bundle, but {path} is a single model "
                              "file; leave --artifact out")
        clf = load(path)
        name = _model_name(clf.manifest.get("name"), path.stem, path)
        return Repository({name: {"1": ModelEntry(name, "1", clf)}})
    if is_bundle(path):
        name = _model_name(read_manifest(path).get("name"), path.name, path)
        _check_names(per_model, [name])
        return Repository({name: {"1": ModelEntry(name, "1", load(path, name))}})
    names = [_model_name(d.name, d.name, d) for d in sorted(p for p in path.iterdir()
                                                             if p.is_dir() and not p.name.startswith("."))]
    _check_names(per_model, names)
    models: dict[str, dict[str, ModelEntry]] = {}
    for model_dir in sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")):
        name = _model_name(model_dir.name, model_dir.name, model_dir)
        versions: dict[str, Path] = {}
        for folder in sorted(v for v in model_dir.iterdir() if v.is_dir() and v.name.isdigit()):
            version = str(int(folder.name))
            if version in versions:
                raise BundleError(f"{folder}: version {version} is also {versions[version]}; "
                                  "keep one folder per version")
            versions[version] = folder
        if not versions:
            raise BundleError(f"{model_dir}: a model folder needs version folders such as "
                              f"{model_dir.name}/1/ holding a bundle or a .onnx file")
        models[name] = {v: ModelEntry(name, v, load(_version_model(d), name)) for v, d in versions.items()}
    return Repository(models)


def _check_names(per_model: dict[str, str], names: list[str]) -> None:
    unknown = sorted(set(per_model) - set(names))
    if unknown:
        raise BundleError(f"--artifact {unknown[0]}={per_model[unknown[0]]}: no model named {unknown[0]!r}; "
                          f"models: {', '.join(names)}")


def _version_model(directory: Path) -> Path:
    """A version folder holds a bundle, or exactly one .onnx file."""
    if is_bundle(directory):
        return directory
    files = sorted(directory.glob("*.onnx"))
    if len(files) != 1:
        raise BundleError(f"{directory}: expected a bundle (graft.json) or exactly one .onnx file; "
                          f"found {len(files)} .onnx files")
    return files[0]


def _model_name(preferred: object, fallback: str, source: Path) -> str:
    for candidate in (preferred, fallback):
        if isinstance(candidate, str) and NAME_PATTERN.match(candidate):
            return candidate
    raise BundleError(f"{source}: no usable model name ({fallback!r}); names may use letters, "
                      "digits, '_', '-' and '.' (at most 128)")
