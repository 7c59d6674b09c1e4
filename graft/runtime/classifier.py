"""The Python API: ``Classifier.load(PATH).predict(images, top_k=5)``.

PATH is a bundle directory (by default its best verified export, in the order
of ``graft.bundle.choice.PREFERENCE``, checked against the sha256 in
graft.json) or a single exported file that carries its manifest.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import Iterable, NamedTuple, Sequence

import numpy as np
from PIL import Image

from graft.bundle import choose_export, is_bundle, read_manifest
from graft.errors import BundleError, GraftError, IntegrityError
from graft.runtime.engines import Engine, open_engine, run_batched, runnable_formats
from graft.runtime.preprocess import DEFAULT_MAX_PIXELS, ImageSource, load_batch


class FlaggedExportWarning(UserWarning):
    """The chosen export broke its verification budget when it was checked."""


class Prediction(NamedTuple):
    label: str
    score: float


class ModelFile(NamedTuple):
    """A model file to run, the bundle's manifest (None for a single file), the sha256 graft.json
    records for it, and which export it is and why it was picked (bundles only)."""

    path: Path
    manifest: dict | None = None
    sha256: str | None = None
    artifact: str | None = None
    reason: str = ""


def resolve_model_file(path: str | os.PathLike, artifact: str | None = None) -> ModelFile:
    """The file to run for a bundle (``artifact``, else its best verified export) or a single file."""
    path = Path(path)
    if path.is_dir():
        if not is_bundle(path):
            raise BundleError(f"{path}: a directory but not a graft bundle (no graft.json)")
        manifest = read_manifest(path)
        choice = choose_export(manifest, artifact, runnable_formats(), where=str(path))
        if choice.row.get("status") == "flagged":
            warnings.warn(f"{path}: the {choice.key} export is flagged in graft.json "
                          f"({choice.row.get('flagged', 'it broke its verification budget')})",
                          FlaggedExportWarning, stacklevel=3)
        return ModelFile(path / choice.row["path"], manifest, choice.row.get("sha256"), choice.key, choice.reason)
    if artifact:
        raise GraftError(f"--artifact picks one export of a bundle, but {path} is a single model file; "
                         "leave --artifact out")
    if not path.exists():
        raise BundleError(f"{path}: no such model file or bundle")
    return ModelFile(path)


class Classifier:
    """Top-k image classification with one exported model, without TensorFlow.

    Attributes:
        engine: the engine running the model file (ONNX Runtime or LiteRT).
        manifest: the bundle's graft.json, or the manifest embedded in the file.
        labels: class names, in the model's output order.
        contract: the preprocessing contract (size, resize, interpolation...).
        source: the model file's path; sha256: its content hash.
        artifact: which export of a bundle runs ('onnx:int8'), and choice: why it was picked.
    """

    def __init__(self, engine: Engine, manifest: dict, source: str = "",
                 max_pixels: int | None = DEFAULT_MAX_PIXELS, sha256: str = ""):
        self.engine = engine
        self.manifest = manifest
        self.source = source
        self.sha256 = sha256
        self.labels: list[str] = list(manifest["labels"])
        self.contract: dict = manifest["preprocessing"]
        self.max_pixels = max_pixels
        self.artifact: str | None = None
        self.choice = ""
        _check_input_shape(engine, self.contract, source)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "auto", model_threads: int | None = None,
             artifact: str | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS,
             engine_options: dict | None = None) -> "Classifier":
        """Load a bundle or a single exported file.

        Args:
            path: a bundle directory, or a .onnx / .tflite file that carries its manifest.
            device: 'auto', 'cpu', 'cuda', 'tensorrt' or 'openvino' (strict unless 'auto').
            model_threads: the engine's threads (onnxruntime intra-op, LiteRT interpreter).
            artifact: which export of a bundle, FORMAT[:PRECISION] (default: the best verified
                export, in the order of ``graft.bundle.choice.PREFERENCE``).
            max_pixels: the largest image (width x height, from its header) to decode.
            engine_options: the engine's own options, e.g. ``{"session_config": {...}}``.

        Returns:
            A Classifier.

        Raises:
            BundleError: no such bundle, export or file, or a file without a manifest.
            IntegrityError: a bundle export whose bytes do not match graft.json.
            DeviceError: the device asked for is not available.
        """
        model_file, manifest, expected_sha, key, reason = resolve_model_file(path, artifact)
        data = model_file.read_bytes() if model_file.is_file() else None
        if data is None:
            raise BundleError(f"{model_file}: the model file is missing; re-run `graft export`")
        actual = hashlib.sha256(data).hexdigest()
        if expected_sha is not None and actual != expected_sha:
            raise IntegrityError(f"{model_file}: sha256 {actual[:12]}... does not match the "
                                 f"{expected_sha[:12]}... recorded in graft.json; the file was "
                                 "changed or damaged, re-run `graft export`")
        engine = open_engine(model_file, device=device, threads=model_threads, model_bytes=data,
                             **(engine_options or {}))
        manifest = manifest or engine.manifest
        if manifest is None:
            raise BundleError(f"{model_file}: the file carries no graft manifest (labels, "
                              "preprocessing); export it with `graft export`")
        clf = cls(engine, manifest, str(model_file), max_pixels, sha256=actual)
        clf.artifact, clf.choice = key, reason
        return clf

    # -- properties ---------------------------------------------------------
    @property
    def device(self) -> str:
        return self.engine.device

    def describe_choice(self) -> str:
        """'exports/model.int8.onnx (onnx:int8: the best verified export; ...)' or the file's path."""
        name = Path(self.source)
        shown = f"{name.parent.name}/{name.name}" if self.artifact else str(name)
        return f"{shown} ({self.artifact}: {self.choice})" if self.artifact else shown

    @property
    def input_size(self) -> tuple[int, int]:
        height, width = self.contract["size"]
        return height, width

    # -- inference ----------------------------------------------------------
    def preprocess(self, images: Iterable[ImageSource]) -> np.ndarray:
        """Decode and resize images exactly as the manifest says: uint8 (N, H, W, 3)."""
        return load_batch(images, self.contract, self.max_pixels)

    def predict_pixels(self, pixels: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """Probabilities (N, C) for preprocessed pixels (N, H, W, 3) in 0..255."""
        pixels = np.asarray(pixels)
        expected = (*self.input_size, 3)
        if pixels.ndim != 4 or tuple(pixels.shape[1:]) != expected:
            raise GraftError(f"expected pixels shaped (N, {expected[0]}, {expected[1]}, 3); "
                             f"received {pixels.shape}")
        outputs = run_batched(self.engine, pixels, batch_size)
        if not outputs:
            return np.zeros((0, len(self.labels)), np.float32)
        return np.concatenate(outputs)

    def top_k(self, probs: np.ndarray, k: int = 5) -> list[list[Prediction]]:
        k = max(1, min(int(k), len(self.labels)))
        order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        return [[Prediction(self.labels[i], float(row[i])) for i in idx]
                for row, idx in zip(probs, order)]

    def predict(self, images: ImageSource | Sequence[ImageSource], top_k: int = 5,
                batch_size: int = 32):
        """Top-k predictions for one image, or a list of them for many.

        Args:
            images: one image (a path, bytes, a PIL image or an HxWx3 array), or a
                list/tuple of them, or an (N, H, W, 3) array.
            top_k: how many labels per image, best first.
            batch_size: images per model call.

        Returns:
            ``[Prediction(label, score), ...]`` for one image, a list of those for many.

        Raises:
            ImageError: an image that cannot be read or decoded.
        """
        single = not _is_many(images)
        batch = [images] if single else list(images)
        results = []
        for start in range(0, len(batch), batch_size):
            pixels = self.preprocess(batch[start:start + batch_size])
            results.extend(self.top_k(self.predict_pixels(pixels, batch_size), top_k))
        return results[0] if single else results


def _is_many(images: object) -> bool:
    if isinstance(images, np.ndarray):
        return images.ndim == 4
    if isinstance(images, (str, bytes, bytearray, memoryview, os.PathLike, Image.Image)):
        return False
    return isinstance(images, Iterable)


def _check_input_shape(engine: Engine, contract: dict, source: str) -> None:
    """The engine's static input height and width must be the manifest's preprocessing size."""
    shape = tuple(engine.input_shape or ())
    if len(shape) != 4:
        return
    height, width = contract["size"]
    if (shape[1], shape[2]) != (height, width) and None not in (shape[1], shape[2]):
        raise BundleError(f"{source}: the model takes {shape[1]}x{shape[2]} images but its manifest "
                          f"says {height}x{width}; the file and its manifest do not belong together, "
                          "re-run `graft export`")
