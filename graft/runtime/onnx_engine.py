"""The ONNX Runtime engine, and how ``--device`` maps onto execution providers.

``auto`` uses CUDA when this onnxruntime offers it (a silent fall-back to the
CPU is a warning); ``cpu``, ``cuda``, ``tensorrt`` and ``openvino`` are strict:
if that provider is missing, or the session falls back, loading fails.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from graft.bundle import METADATA_KEY, parse_manifest
from graft.errors import BundleError, DeviceError, first_line
from graft.runtime.engines import Engine, default_threads, read_model

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
_DTYPES = {"tensor(float)": np.float32, "tensor(uint8)": np.uint8}


class DeviceFallbackWarning(RuntimeWarning):
    """``--device auto`` found a GPU provider but the session runs on the CPU."""


GPU_INSTALL = "pip uninstall -y onnxruntime && pip install onnxruntime-gpu"
RUNTIME_PACKAGES = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino", "onnxruntime-directml")


def onnxruntime_packages() -> list[str]:
    """The onnxruntime distributions installed: more than one share the module and shadow each other."""
    from importlib import metadata

    found = []
    for name in RUNTIME_PACKAGES:
        try:
            metadata.version(name)
            found.append(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def resolve_providers(device: str, available: list[str]) -> list[str]:
    """Map --device to the ONNX Runtime providers to ask for, or raise DeviceError."""
    if device not in DEVICES:
        raise DeviceError(f"unknown device {device!r}; allowed: {', '.join(DEVICES)}")
    installed = onnxruntime_packages() if device != "cpu" else []
    if len(installed) > 1:
        message = (f"{' and '.join(installed)} are installed side by side and shadow each other; "
                   f"keep one: pip uninstall -y {' '.join(installed)} && pip install "
                   f"{'onnxruntime-gpu' if 'onnxruntime-gpu' in installed else installed[-1]}")
        if device != "auto":
            raise DeviceError(message)
        warnings.warn(message, DeviceFallbackWarning, stacklevel=3)
    if device == "auto":
        return [p for p in ("CUDAExecutionProvider", _CPU) if p in available]
    wanted = _DEVICE_PROVIDERS[device]
    if wanted[0] not in available:
        raise DeviceError(f"device {device!r} needs {wanted[0]}, but this onnxruntime offers "
                          f"only {', '.join(available)}; for CUDA: {GPU_INSTALL}; or use --device cpu")
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
        self.threads = default_threads(threads)  # every allowed core, as LiteRT's engine
        options.intra_op_num_threads = self.threads
        for key, value in (session_config or {}).items():  # e.g. session.intra_op.allow_spinning
            options.add_session_config_entry(key, str(value))
        data = model_bytes if model_bytes is not None else read_model(self.path)
        try:
            self.session = ort.InferenceSession(data, sess_options=options, providers=requested)
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise BundleError(f"{self.path}: not a loadable ONNX model ({first_line(exc)[:200]})") from exc
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
        if model_input.type not in _DTYPES:
            raise BundleError(f"{self.path}: the model's input is {model_input.type}; graft feeds RGB "
                              "pixels 0..255 as float32 or uint8, so it cannot run this model")
        self.input_dtype = np.dtype(_DTYPES[model_input.type])
        self.output_dtype = np.dtype(_DTYPES.get(self.session.get_outputs()[0].type, np.float32))
        meta = self.session.get_modelmeta().custom_metadata_map
        self.manifest = parse_manifest(meta[METADATA_KEY], str(self.path)) if METADATA_KEY in meta else None

    def run(self, pixels: np.ndarray) -> np.ndarray:
        feed = np.ascontiguousarray(pixels, dtype=self.input_dtype)
        return np.asarray(self.session.run(None, {self.input_name: feed})[0], dtype=np.float32)
