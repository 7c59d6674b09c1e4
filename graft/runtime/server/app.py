"""The Starlette app: Open Inference Protocol routes, /classify, /metrics, /openapi.json."""

from __future__ import annotations

import asyncio

import contextlib
import functools
import json
import os
import time
from dataclasses import dataclass

import anyio.to_thread
import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from graft import __version__
from graft.errors import GraftError, ImageTooLarge, UnsupportedImage
from graft.runtime.server import openapi
from graft.runtime.server.batcher import Batcher
from graft.runtime.server.config import ServerConfig
from graft.runtime.server.errors import (BadRequest, PayloadTooLarge, ServerError,
                                         Unavailable, UnsupportedMediaType)
from graft.runtime.server.metrics import Metrics
from graft.runtime.server.protocol import HEADER_LENGTH, parse_infer, infer_response
from graft.runtime.server.repository import ModelEntry, Repository

PARSE_IN_THREAD_BYTES = 32 * 1024  # bigger JSON bodies are parsed off the event loop
EXTENSIONS = ["classification", "binary_tensor_data", "model_configuration"]


@dataclass
class ServerState:
    draining: bool = False
    inflight: int = 0   # HTTP requests being answered now


class InflightMiddleware:
    """Counts requests in progress, so a SIGTERM can wait for them."""

    def __init__(self, app, state: ServerState):
        self.app, self.state = app, state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        self.state.inflight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.state.inflight -= 1


def error_response(exc: Exception) -> JSONResponse:
    return JSONResponse({"error": str(exc)}, status_code=getattr(exc, "status", 500))


def as_server_error(exc: GraftError) -> ServerError:
    """Map runtime errors (bad images) onto HTTP errors."""
    if isinstance(exc, ServerError):
        return exc
    if isinstance(exc, ImageTooLarge):
        return PayloadTooLarge(str(exc))
    if isinstance(exc, UnsupportedImage):
        return UnsupportedMediaType(str(exc))
    return BadRequest(str(exc))


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed ``limit``."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body of {declared} bytes exceeds the limit of {limit} bytes")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        raise BadRequest("the client disconnected before the request body was complete") from None
    return b"".join(chunks)


def decode_images(entry: ModelEntry, images: list[bytes]) -> np.ndarray:
    """Decode and resize encoded images as the model's contract says (runs in a thread)."""
    arrays = []
    for index, data in enumerate(images):
        where = f"image {index + 1} of {len(images)}: " if len(images) > 1 else ""
        try:
            arrays.append(entry.classifier.preprocess([data])[0])
        except GraftError as exc:
            raise type(as_server_error(exc))(f"{where}{exc}") from None
        except Exception as exc:  # a decoder failing on hostile bytes is still bad input
            raise BadRequest(f"{where}cannot decode image ({type(exc).__name__}: {exc})") from None
    return np.stack(arrays)


class Server:
    """Routes bound to one repository, config, metrics and state."""

    def __init__(self, repository: Repository, config: ServerConfig):
        self.repository, self.config = repository, config
        self.state, self.metrics = ServerState(), Metrics()
        self.decode_limiter = None  # made in the event loop, at startup
        for entry in repository.entries():
            entry.batcher = Batcher(
                lambda pixels, clf=entry.classifier: clf.predict_pixels(pixels, config.max_batch_size),
                config.max_batch_size, config.max_queue_delay_ms / 1000, config.max_queue,
                name=f"{entry.name}:{entry.version}",
                on_batch=self.metrics.batch_observer(entry.name, entry.version))
            self.metrics.pending.labels(entry.name, entry.version).set_function(
                lambda b=entry.batcher: b.queued)
        self.metrics.in_flight.set_function(lambda: self.state.inflight)

    # -- lifecycle ------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def lifespan(self, app):
        # Decoding runs in threads; a few at a time bounds the memory that large images take.
        self.decode_limiter = anyio.CapacityLimiter(max(2, os.cpu_count() or 2))
        for entry in self.repository.entries():
            entry.batcher.start()
        yield
        for entry in self.repository.entries():
            await entry.batcher.stop()

    def routes(self) -> list[Route]:
        model = "/v2/models/{name}"
        versioned = "/v2/models/{name}/versions/{version}"
        routes = [Route("/v2/health/live", self.live), Route("/v2/health/ready", self.ready),
                  Route("/v2", self.server_metadata), Route("/metrics", self.metrics_page),
                  Route("/openapi.json", self.openapi_page), Route("/v2/models", self.model_index)]
        for prefix in (model, versioned):
            routes += [Route(prefix, self.model_metadata), Route(prefix + "/ready", self.model_ready),
                       Route(prefix + "/config", self.model_config),
                       Route(prefix + "/infer", self.infer, methods=["POST"]),
                       Route(prefix + "/classify", self.classify, methods=["POST"])]
        return routes

    def entry(self, request: Request) -> ModelEntry:
        params = request.path_params
        return self.repository.get(params["name"], params.get("version"))

    # -- health and metadata --------------------------------------------------
    async def live(self, request: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(self, request: Request) -> Response:
        if self.state.draining:
            return error_response(Unavailable("the server is shutting down"))
        return JSONResponse({"ready": True})

    async def server_metadata(self, request: Request) -> Response:
        return JSONResponse({"name": "graft", "version": __version__, "extensions": EXTENSIONS})

    async def model_index(self, request: Request) -> Response:
        return JSONResponse({"models": [{"name": n, "versions": self.repository.versions(n)}
                                        for n in sorted(self.repository.models)]})

    async def model_metadata(self, request: Request) -> Response:
        entry = self.entry(request)
        return JSONResponse({
            "name": entry.name, "versions": self.repository.versions(entry.name),
            "platform": entry.platform,
            "inputs": [{"name": entry.input_name, "datatype": entry.datatype, "shape": entry.input_shape}],
            "outputs": [{"name": entry.output_name, "datatype": "FP32", "shape": [-1, len(entry.labels)]}],
        })

    async def model_ready(self, request: Request) -> Response:
        entry = self.entry(request)
        if self.state.draining:
            return error_response(Unavailable(f"model {entry.name!r}: the server is shutting down"))
        return JSONResponse({"name": entry.name, "ready": True})

    async def model_config(self, request: Request) -> Response:
        entry = self.entry(request)
        return JSONResponse({
            "name": entry.name, "platform": entry.platform, "max_batch_size": self.config.max_batch_size,
            "input": [{"name": entry.input_name, "data_type": f"TYPE_{entry.datatype}",
                       "format": "FORMAT_NHWC", "dims": entry.input_shape[1:]}],
            "output": [{"name": entry.output_name, "data_type": "TYPE_FP32", "dims": [len(entry.labels)]}],
            "dynamic_batching": {"max_queue_delay_microseconds": int(self.config.max_queue_delay_ms * 1000)},
            "parameters": {"labels": {"string_value": json.dumps(entry.labels)}},
        })

    async def metrics_page(self, request: Request) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(self.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    async def openapi_page(self, request: Request) -> Response:
        return JSONResponse(openapi.document(__version__))

    # -- inference ------------------------------------------------------------
    async def infer(self, request: Request) -> Response:
        return await self._run(request, self._infer)

    async def classify(self, request: Request) -> Response:
        return await self._run(request, self._classify)

    async def _run(self, request: Request, handler) -> Response:
        """Resolve the model, run ``handler`` and count the outcome in the metrics."""
        entry = self.entry(request)
        start, reason = time.perf_counter(), None
        try:
            return await handler(request, entry, time.monotonic())
        except GraftError as exc:
            error = as_server_error(exc)
            reason = error.reason
            return error_response(error)
        except asyncio.CancelledError:  # the client went away mid-request: not a success
            reason = "CANCELED"
            raise
        except Exception:
            reason = "BACKEND"
            raise
        finally:
            self.metrics.request_done(entry.name, entry.version, time.perf_counter() - start, reason)

    def _deadline(self, arrived: float, timeout_us: int | None = None) -> float:
        timeout_s = self.config.timeout_ms / 1000
        if timeout_us is not None:
            timeout_s = min(timeout_s, timeout_us / 1e6)
        return arrived + timeout_s

    async def _decode(self, entry: ModelEntry, images: list[bytes]) -> np.ndarray:
        work = functools.partial(decode_images, entry, images)
        return await anyio.to_thread.run_sync(work, limiter=self.decode_limiter)

    async def _infer(self, request: Request, entry: ModelEntry, arrived: float) -> Response:
        with entry.batcher.arriving():
            body = await read_body(request, self.config.max_body_bytes)
            header = request.headers.get(HEADER_LENGTH)
            if len(body) > PARSE_IN_THREAD_BYTES:
                parsed = await run_in_threadpool(parse_infer, body, header, entry)
            else:
                parsed = parse_infer(body, header, entry)
            pixels = parsed.pixels
            if pixels is None:
                pixels = await self._decode(entry, parsed.images)
        probs, _ = await entry.batcher.submit(pixels, self._deadline(arrived, parsed.timeout_us))
        content, headers = infer_response(entry, parsed, probs)
        return Response(content, headers=headers)

    async def _classify(self, request: Request, entry: ModelEntry, arrived: float) -> Response:
        top_k = _top_k(request.query_params.get("top_k"), len(entry.labels))
        with entry.batcher.arriving():
            body = await read_body(request, self.config.max_body_bytes)
            names, images = await _uploaded_images(request, body)
            pixels = await self._decode(entry, images)
        probs, _ = await entry.batcher.submit(pixels, self._deadline(arrived))
        results = [{"filename": name, "predictions": [{"label": p.label, "score": p.score} for p in row]}
                   for name, row in zip(names, entry.classifier.top_k(probs, top_k))]
        return JSONResponse({"model_name": entry.name, "model_version": entry.version, "results": results})


def _top_k(value: str | None, classes: int) -> int:
    if value is None:
        return min(5, classes)
    if not value.isdigit() or not 1 <= int(value) <= 1000:
        raise BadRequest(f"top_k must be an integer from 1 to 1000; received {value[:40]!r}")
    return min(int(value), classes)


async def _uploaded_images(request: Request, body: bytes) -> tuple[list[str | None], list[bytes]]:
    """A raw image body, or the files of a multipart/form-data upload."""
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        if not body:
            raise BadRequest("empty request body; send the image bytes, or a multipart upload "
                             "with a file field named 'image'")
        return [None], [body]

    async def replay():
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=64, max_fields=64)
    except HTTPException as exc:
        raise BadRequest(f"malformed multipart upload: {exc.detail}") from None
    except Exception as exc:  # the multipart parser's own errors
        raise BadRequest(f"malformed multipart upload: {exc}") from None
    files = [value for _, value in form.multi_items() if not isinstance(value, str)]
    if not files:
        raise BadRequest("the multipart upload carries no file; send the image as a file field named 'image'")
    return [f.filename for f in files], [await f.read() for f in files]


async def _http_error(request: Request, exc: HTTPException) -> Response:
    return JSONResponse({"error": f"{exc.detail}: {request.method} {request.url.path}"},
                        status_code=exc.status_code, headers=getattr(exc, "headers", None))


async def _server_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, GraftError):
        return error_response(as_server_error(exc))
    return JSONResponse({"error": f"internal error: {type(exc).__name__}"}, status_code=500)


def create_app(repository: Repository, config: ServerConfig | None = None) -> tuple[object, Server]:
    """The ASGI app (with the in-flight counter) and the Server behind it."""
    server = Server(repository, config or ServerConfig())
    app = Starlette(routes=server.routes(), lifespan=server.lifespan,
                    exception_handlers={HTTPException: _http_error, GraftError: _server_error,
                                        Exception: _server_error})
    return InflightMiddleware(app, server.state), server
