"""The LiteRT engine: runs .tflite files with ai-edge-litert, never TensorFlow.

Quantized inputs and outputs are scaled with each tensor's scale and
zero-point, so callers pass pixels (uint8 or float32, 0..255) and get float32
probabilities whatever the model's I/O dtype. A LiteRT interpreter is not
thread-safe: each thread gets its own, made on first use.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

from graft.errors import BundleError, DeviceError, first_line
from graft.runtime.engines import Engine, default_threads, read_model
from graft.runtime.tflite_metadata import read_manifest

from ai_edge_litert.interpreter import Interpreter  # noqa: E402  (ImportError: graft[litert] missing)

DEVICES = ("auto", "cpu")


class LiteRTEngine(Engine):
    format = "tflite"
    device = "cpu"
    providers = ["LiteRT CPU (XNNPACK)"]

    def __init__(self, path: str | os.PathLike, device: str = "auto", threads: int | None = None,
                 model_bytes: bytes | None = None):
        if device not in DEVICES:
            raise DeviceError(f"device {device!r} is not available for .tflite models; "
                              f"allowed: {', '.join(DEVICES)} (LiteRT runs on the CPU here)")
        self.path = Path(path)
        self.threads = default_threads(threads)  # LiteRT alone would use one thread
        self.data = model_bytes if model_bytes is not None else read_model(self.path)
        self._local = threading.local()
        from graft.quiet import native_output

        with native_output((2,)):  # LiteRT announces its XNNPACK delegate on stderr
            interpreter = self._interpreter()  # validates the file before anything else
        self.input = interpreter.get_input_details()[0]
        self.output = interpreter.get_output_details()[0]
        signature = tuple(int(d) for d in self.input["shape_signature"])
        self.input_shape = tuple(None if d < 0 else d for d in signature)
        self.input_dtype = np.dtype(self.input["dtype"])
        self.output_dtype = np.dtype(self.output["dtype"])
        self.manifest = read_manifest(self.data, str(self.path))

    def _interpreter(self) -> Interpreter:
        state = self._local
        if getattr(state, "interpreter", None) is None:
            try:
                state.interpreter = Interpreter(model_content=self.data, num_threads=self.threads)
                state.interpreter.allocate_tensors()
            except (ValueError, RuntimeError) as exc:
                first = first_line(exc)
                raise BundleError(f"{self.path}: not a loadable TFLite model ({first[:200]})") from None
            state.batch = int(state.interpreter.get_input_details()[0]["shape"][0])
        return state.interpreter

    def run(self, pixels: np.ndarray) -> np.ndarray:
        interpreter = self._interpreter()
        pixels = np.asarray(pixels)
        index = self.input["index"]
        if len(pixels) != self._local.batch:
            interpreter.resize_tensor_input(index, [len(pixels), *pixels.shape[1:]], strict=True)
            interpreter.allocate_tensors()
            self._local.batch = len(pixels)
        interpreter.set_tensor(index, quantize(pixels, self.input))
        interpreter.invoke()
        return dequantize(interpreter.get_tensor(self.output["index"]), self.output)


def quantize(values: np.ndarray, detail: dict) -> np.ndarray:
    """float values -> the tensor's dtype, with its scale and zero-point when it is quantized."""
    dtype = np.dtype(detail["dtype"])
    if dtype.kind == "f":
        return np.ascontiguousarray(values, dtype=dtype)
    scale, zero_point = detail["quantization"]
    if values.dtype == dtype and scale in (0.0, 1.0) and zero_point == 0:
        return np.ascontiguousarray(values)  # uint8 pixels into a uint8 input of scale 1: as they are
    scaled = values.astype(np.float32)
    if scale:
        scaled = np.rint(scaled / scale) + zero_point
    info = np.iinfo(dtype)
    return np.ascontiguousarray(np.clip(scaled, info.min, info.max).astype(dtype))


def dequantize(values: np.ndarray, detail: dict) -> np.ndarray:
    """The tensor's values as float32, undoing its scale and zero-point."""
    if np.dtype(values.dtype).kind == "f":
        return np.asarray(values, dtype=np.float32)
    scale, zero_point = detail["quantization"]
    values = values.astype(np.float32)
    return (values - zero_point) * scale if scale else values
