"""The LiteRT engine: runs .tflite files with ai-edge-litert, never TensorFlow.

Quantized inputs and outputs are scaled with each tensor's scale and
zero-point, so callers pass pixels (uint8 or float32, 0..255) and get float32
probabilities whatever the model's I/O dtype. A LiteRT interpreter is not
thread-safe: each thread gets its own, made on first use.
"""

from __future__ import annotations

import os
import struct
import threading
from pathlib import Path

import numpy as np

from graft.bundle import METADATA_KEY, parse_manifest
from graft.errors import BundleError, DeviceError, first_line
from graft.runtime.engines import ENGINES, Engine, _read

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
        self.threads = int(threads) if threads else None
        self.data = model_bytes if model_bytes is not None else _read(self.path)
        self._local = threading.local()
        interpreter = self._interpreter()  # validates the file before anything else
        self.input = interpreter.get_input_details()[0]
        self.output = interpreter.get_output_details()[0]
        signature = tuple(int(d) for d in self.input["shape_signature"])
        self.input_shape = tuple(None if d < 0 else d for d in signature)
        self.input_dtype = np.dtype(self.input["dtype"])
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


def read_manifest(data: bytes, source: str) -> dict | None:
    """The graft manifest from a TFLite flatbuffer's metadata table, or None if it has none."""
    payload = read_metadata(data, METADATA_KEY, source)
    return None if payload is None else parse_manifest(payload, source)


def read_metadata(data: bytes, name: str, source: str = "model") -> bytes | None:
    """A named metadata buffer of a TFLite flatbuffer, read with ``flatbuffers`` alone.

    From the TFLite schema: Model.buffers is field 4 and Model.metadata field 6;
    Metadata is {name: string, buffer: uint}; Buffer is {data: [ubyte], offset: ulong,
    size: ulong}, offset/size being used by large models that keep their buffers
    after the flatbuffer. A field's vtable slot is 4 + 2 * its index.
    """
    from flatbuffers import encode, number_types, table

    try:
        data = bytes(data)
        model = table.Table(data, encode.Get(number_types.UOffsetTFlags.packer_type, data, 0))
        buffers = _tables(model, _slot(4))
        for entry in _tables(model, _slot(6)):
            field = entry.Offset(_slot(0))
            if not field or entry.String(field + entry.Pos).decode() != name:
                continue
            field = entry.Offset(_slot(1))
            buffer = buffers[entry.Get(number_types.Uint32Flags, field + entry.Pos) if field else 0]
            if buffer.Offset(_slot(1)):
                offset = buffer.Get(number_types.Uint64Flags, buffer.Offset(_slot(1)) + buffer.Pos)
                size = buffer.Get(number_types.Uint64Flags, buffer.Offset(_slot(2)) + buffer.Pos)
                if offset > 1:
                    return data[offset:offset + size]
            field = buffer.Offset(_slot(0))
            if not field:
                return b""
            start = buffer.Vector(field)
            return data[start:start + buffer.VectorLen(field)]
    except (struct.error, IndexError, UnicodeDecodeError, ValueError) as exc:  # a damaged flatbuffer raises struct/index/unicode errors
        raise BundleError(f"{source}: the TFLite metadata cannot be read ({type(exc).__name__}); "
                          "the file is damaged, re-run `graft export`") from None
    return None


def _slot(index: int) -> int:
    return 4 + 2 * index


def _tables(parent, slot: int) -> list:
    """The tables of a vector-of-tables field."""
    from flatbuffers import table

    field = parent.Offset(slot)
    if not field:
        return []
    start = parent.Vector(field)
    return [table.Table(parent.Bytes, parent.Indirect(start + 4 * i))
            for i in range(parent.VectorLen(field))]


ENGINES[".tflite"] = LiteRTEngine
