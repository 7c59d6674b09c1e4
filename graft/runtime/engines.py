"""Engines run one exported model file on a batch of RGB pixels.

An engine takes pixels shaped (N, H, W, 3) in 0..255 (uint8 or float32), feeds
them in the dtype the model wants, and returns float32 probabilities (N, C).
Engines are registered by file suffix; the ONNX Runtime engine is always here,
the LiteRT engine when ``ai-edge-litert`` is installed.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Callable

import numpy as np

from graft.bundle import METADATA_KEY, parse_manifest
from graft.errors import BundleError, DeviceError, first_line

DEVICES = ("auto", "cpu", "cuda", "tensorrt", "openvino")
_CPU = "CPUExecutionProvider"
_DEVICE_PROVIDERS = {
    "cpu": [_CPU],
    "cuda": ["CUDAExecutionProvider", _CPU],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", _CPU],
    "openvino": ["OpenVINOExecutionProvider", _CPU],
}
_PROVIDER_DEVICE = {"CPUExecutionProvider": "cpu", "CUDAExecutionProvider": "cuda",
                    "TensorrtExecutionProvider": "tensorrt", "OpenVINOExecutionProvider": "openvino"}


class DeviceFallbackWarning(RuntimeWarning):
    """``--device auto`` found a GPU provider but the session runs on the CPU."""


class Engine:
    """What the Classifier needs from an engine. Subclasses fill these in."""

    format = ""
    manifest: dict | None = None   # the manifest embedded in the file, if any
    device = "cpu"                  # the device actually in use
    providers: list[str] = []
    input_shape: tuple = ()         # (N, H, W, 3); N is None for a dynamic batch
    input_dtype = np.dtype(np.float32)

    def run(self, pixels: np.ndarray) -> np.ndarray:
        raise NotImplementedError


def resolve_providers(device: str, available: list[str]) -> list[str]:
    """Map --device to the ONNX Runtime providers to ask for, or raise DeviceError."""
    if device not in DEVICES:
        raise DeviceError(f"unknown device {device!r}; allowed: {', '.join(DEVICES)}")
    if device == "auto":
        return [p for p in ("CUDAExecutionProvider", _CPU) if p in available]
    wanted = _DEVICE_PROVIDERS[device]
    if wanted[0] not in available:
        raise DeviceError(f"device {device!r} needs {wanted[0]}, but this onnxruntime offers "
                          f"only {', '.join(available)}; install graft[gpu] (onnxruntime-gpu) "
                          "or use --device cpu")
    return [p for p in wanted if p in available]


class OnnxEngine(Engine):
    format = "onnx"

    def __init__(self, path: str | os.PathLike, device: str = "auto", threads: int | None = None,
                 model_bytes: bytes | None = None, session_config: dict[str, str] | None = None):
        import onnxruntime as ort

        self.path = Path(path)
        requested = resolve_providers(device, ort.get_available_providers())
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = int(threads)
        for key, value in (session_config or {}).items():  # e.g. session.intra_op.allow_spinning
            options.add_session_config_entry(key, str(value))
        data = model_bytes if model_bytes is not None else _read(self.path)
        try:
            self.session = ort.InferenceSession(data, sess_options=options, providers=requested)
        except Exception as exc:  # onnxruntime raises its own untyped errors
            first = first_line(exc)
            raise BundleError(f"{self.path}: not a loadable ONNX model ({first[:200]})") from None
        self.providers = self.session.get_providers()
        self.device = _PROVIDER_DEVICE.get(self.providers[0], self.providers[0])
        if device != "auto" and self.providers[0] != requested[0]:
            raise DeviceError(f"device {device!r} was asked for but the session fell back to "
                              f"{self.providers[0]}; check the GPU drivers or use --device cpu")
        if device == "auto" and requested[0] != _CPU and self.providers[0] == _CPU:
            warnings.warn(f"{requested[0]} is installed but the model runs on the CPU "
                          "(the GPU provider failed to start)", DeviceFallbackWarning, stacklevel=2)
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        self.input_shape = tuple(d if isinstance(d, int) else None for d in model_input.shape)
        self.input_dtype = np.dtype({"tensor(float)": np.float32, "tensor(uint8)": np.uint8,
                                     "tensor(int8)": np.int8}.get(model_input.type, np.float32))
        meta = self.session.get_modelmeta().custom_metadata_map
        self.manifest = parse_manifest(meta[METADATA_KEY], str(self.path)) if METADATA_KEY in meta else None

    def run(self, pixels: np.ndarray) -> np.ndarray:
        feed = np.ascontiguousarray(pixels, dtype=self.input_dtype)
        return np.asarray(self.session.run(None, {self.input_name: feed})[0], dtype=np.float32)


def run_batched(engine: Engine, pixels: np.ndarray, batch: int = 32) -> list[np.ndarray]:
    """Run ``pixels`` through ``engine`` in chunks of ``batch`` (or the model's fixed batch)."""
    fixed = engine.input_shape[0] if engine.input_shape else None
    step = fixed or batch
    return [engine.run(pixels[i:i + step]) for i in range(0, len(pixels), step)]


def _read(path: Path) -> bytes:
    if not path.is_file():
        raise BundleError(f"{path}: no such model file")
    return path.read_bytes()


# suffix -> factory(path, device, threads, model_bytes)
ENGINES: dict[str, Callable[..., Engine]] = {".onnx": OnnxEngine}


def open_engine(path: str | os.PathLike, device: str = "auto", threads: int | None = None,
                model_bytes: bytes | None = None, **engine_options) -> Engine:
    """Open ``path`` with the engine registered for its suffix (``engine_options``: that
    engine's own keyword arguments, e.g. ``session_config`` for ONNX Runtime)."""
    suffix = Path(path).suffix.lower()
    if suffix == ".tflite" and suffix not in ENGINES:
        try:
            from graft.runtime import litert  # noqa: F401  (registers itself)
        except ImportError:
            raise BundleError(f"{path}: TFLite models need the LiteRT runtime; "
                              "install graft[litert]") from None
    if suffix not in ENGINES:
        raise BundleError(f"{path}: unknown model format {suffix or '(no suffix)'!r}; "
                          f"allowed: {', '.join(sorted(ENGINES))} or a bundle directory")
    return ENGINES[suffix](path, device=device, threads=threads, model_bytes=model_bytes,
                           **engine_options)

