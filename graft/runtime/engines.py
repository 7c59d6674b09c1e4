"""Engines run one exported model file on a batch of RGB pixels.

An engine takes pixels shaped (N, H, W, 3) in 0..255 (uint8 or float32), feeds
them in the dtype the model wants, and returns float32 probabilities (N, C).
Engines are registered by file suffix as ``"module:Class"`` strings, imported
only when a file of that suffix is opened; adding an engine is one module plus
one line in ``ENGINES``.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import numpy as np

from graft.errors import BundleError

# suffix -> (engine class, the extra that installs what it needs)
ENGINES: dict[str, tuple[str, str]] = {
    ".onnx": ("graft.runtime.onnx_engine:OnnxEngine", ""),
    ".tflite": ("graft.runtime.litert:LiteRTEngine", "litert"),
}


class Engine:
    """What the Classifier needs from an engine. Subclasses fill these in."""

    format = ""
    manifest: dict | None = None   # the manifest embedded in the file, if any
    device = "cpu"                  # the device actually in use
    providers: list[str] = []
    input_shape: tuple = ()         # (N, H, W, 3); N is None for a dynamic batch
    input_dtype = np.dtype(np.float32)
    output_dtype = np.dtype(np.float32)  # the file's own output tensor (the runtime dequantizes)

    def run(self, pixels: np.ndarray) -> np.ndarray:
        raise NotImplementedError


def allowed_cores() -> int:
    """The CPU cores this process may use: its affinity mask, capped by a cgroup v2 CPU quota
    (a container limited to 2 CPUs on a 64-core host gets 2)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, int(int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def default_threads(threads: int | None) -> int:
    """An engine's threads: ``threads`` when given, else every allowed core."""
    return int(threads) if threads else allowed_cores()


def runnable_formats() -> tuple[str, ...]:
    """The model formats this installation can run (tflite needs the litert extra)."""
    import importlib.util

    formats = ["onnx"]
    if importlib.util.find_spec("ai_edge_litert") is not None:
        formats.append("tflite")
    return tuple(formats)


def engine_class(suffix: str, path: str | os.PathLike = "") -> type:
    """The engine class registered for ``suffix``; BundleError when none is, or its extra is missing."""
    if suffix not in ENGINES:
        raise BundleError(f"{path}: unknown model format {suffix or '(no suffix)'!r}; "
                          f"allowed: {', '.join(sorted(ENGINES))} or a bundle directory")
    target, extra = ENGINES[suffix]
    module, _, name = target.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except ModuleNotFoundError as exc:
        if not extra or (exc.name or "").startswith("graft"):
            raise
        raise BundleError(f"{path}: {suffix} models need {exc.name}, which is not installed; "
                          f"pip install 'graft[{extra}]'") from exc


def open_engine(path: str | os.PathLike, device: str = "auto", threads: int | None = None,
                model_bytes: bytes | None = None, **engine_options) -> Engine:
    """Open ``path`` with the engine registered for its suffix (``engine_options``: that
    engine's own keyword arguments, e.g. ``session_config`` for ONNX Runtime)."""
    cls = engine_class(Path(path).suffix.lower(), path)
    return cls(path, device=device, threads=threads, model_bytes=model_bytes, **engine_options)


def run_batched(engine: Engine, pixels: np.ndarray, batch: int = 32) -> list[np.ndarray]:
    """Run ``pixels`` through ``engine`` in chunks of ``batch``, or of the model's fixed batch
    size (a short last chunk is padded with copies of its last image, and cut back after)."""
    fixed = engine.input_shape[0] if engine.input_shape else None
    step = fixed or batch
    outputs = []
    for i in range(0, len(pixels), step):
        chunk = pixels[i:i + step]
        if fixed and len(chunk) < fixed:
            padded = np.concatenate([chunk, np.repeat(chunk[-1:], fixed - len(chunk), axis=0)])
            outputs.append(engine.run(padded)[:len(chunk)])
        else:
            outputs.append(engine.run(chunk))
    return outputs


def read_model(path: Path) -> bytes:
    """A model file's bytes; BundleError when it is missing."""
    if not path.is_file():
        raise BundleError(f"{path}: no such model file")
    return path.read_bytes()
