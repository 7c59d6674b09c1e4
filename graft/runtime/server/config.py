"""Server settings, shared by the CLI, the app and the batcher."""

from __future__ import annotations

from dataclasses import dataclass

from graft.runtime.preprocess import DEFAULT_MAX_PIXELS

DEFAULT_MAX_REQUEST_PIXELS = 2 * DEFAULT_MAX_PIXELS
DEFAULT_MAX_BATCH_SIZE = 32  # the most images per request, and per batch when batching is on


@dataclass(frozen=True)
class ServerConfig:
    """How ``graft serve`` listens, runs its models, batches and limits requests.

    Each model version runs on ``instances`` engines of ``model_threads`` threads
    each (see ``placement.plan_instances``); ``max_batch_size`` None lets a
    measurement at start-up decide whether combining requests pays.

    Limits per image: ``max_pixels`` (width x height from the header). Per
    request: ``max_body_bytes``, ``max_request_pixels`` (the sum over its
    images, from their headers, before any is decoded), ``body_timeout_s`` (to
    receive the whole body) and ``timeout_ms`` (to answer). Per process:
    ``limit_concurrency`` (open connections; a request on one more gets 503) and
    ``max_queue`` per model version.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    max_batch_size: int | None = None  # None: batch only where it pays, measured at start-up
    max_queue_delay_ms: float = 2.0
    max_queue: int = 256              # queued requests per model version; more get 503
    timeout_ms: float = 30_000.0      # a request older than this gets 504
    device: str = "auto"
    model_threads: int | None = None  # ONNX Runtime intra-op / LiteRT threads per instance
    instances: int | None = None      # engines per model version; None: from the cores and device
    instance_kind: str = "thread"     # where instances run: "thread" (this process) or "process" (workers)
    pin_cores: bool = False           # keep each CPU instance on cores of its own
    spin_wait: bool = False           # let onnxruntime's idle intra-op threads spin (CPU instances)
    lone_request_threads: int = 0     # >0: a request alone runs on an extra engine of this many threads
    max_body_bytes: int = 32 * 1024 * 1024
    max_pixels: int | None = DEFAULT_MAX_PIXELS                  # per image
    max_request_pixels: int | None = DEFAULT_MAX_REQUEST_PIXELS  # summed over one request's images
    body_timeout_s: float | None = 60.0  # a body not received within this time gets 408
    limit_concurrency: int | None = 1024  # open connections served; a request on one more gets 503
    drain_timeout_s: float = 30.0     # after SIGTERM, wait at most this long for in-flight requests
    log_level: str = "info"
    artifacts: tuple[str, ...] = ()  # which export of a bundle: 'FORMAT:PRECISION' or 'NAME=FORMAT:PRECISION'

    @property
    def batch_limit(self) -> int:
        """The most images one request may carry (and one batch may hold)."""
        return self.max_batch_size or DEFAULT_MAX_BATCH_SIZE
