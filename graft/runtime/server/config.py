"""Server settings, shared by the CLI, the app and the batcher."""

from __future__ import annotations

from dataclasses import dataclass

from graft.runtime.preprocess import DEFAULT_MAX_PIXELS


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch_size: int = 32
    max_queue_delay_ms: float = 2.0
    max_queue: int = 256              # queued requests per model version; more get 503
    timeout_ms: float = 30_000.0      # a request older than this gets 504
    device: str = "auto"
    threads: int | None = None        # ONNX Runtime intra-op threads per model
    max_body_bytes: int = 32 * 1024 * 1024
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    drain_timeout_s: float = 30.0     # after SIGTERM, wait at most this long for in-flight requests
    log_level: str = "info"
