"""The Starlette app: the page, Open Inference Protocol routes, /classify, /metrics, /openapi.json."""

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
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from graft import __version__
from graft.errors import GraftError
from graft.runtime.server import openapi, page
from graft.runtime.server.config import ServerConfig
from graft.runtime.server.errors import BadRequest, RequestTimeout, ServerError, Unavailable
from graft.runtime.server.decoding import as_server_error, decode_images
from graft.runtime.server.instances import Deferred
from graft.runtime.server.worker import Encoded
from graft.runtime.server.intake import ClientWatch, read_body, uploaded_images
from graft.runtime.server.metrics import Metrics
from graft.runtime.server.pools import decide_batching, make_batcher
from graft.runtime.server.protocol import HEADER_LENGTH, infer_response, parse_infer, parse_json
from graft.runtime.server.repository import ModelEntry, Repository

PARSE_IN_THREAD_BYTES = 32 * 1024  # bigger JSON bodies are parsed off the event loop
EXTENSIONS = ["classification", "binary_tensor_data", "model_configuration", "model_repository"]
INDEX_BODY_BYTES = 64 * 1024


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


def error_response(exc: ServerError) -> JSONResponse:
    headers = {"Connection": "close"} if isinstance(exc, RequestTimeout) else None  # the body is unread
    return JSONResponse({"error": str(exc)}, status_code=getattr(exc, "status", 500), headers=headers)


class Server:
    """Routes bound to one repository, config, metrics and state."""

    def __init__(self, repository: Repository, config: ServerConfig):
        self.repository, self.config = repository, config
        self.state, self.metrics = ServerState(), Metrics()
        self.decode_limiter = None  # made in the event loop, at startup
        for entry in repository.entries():
            entry.batcher = make_batcher(entry, config, self.metrics.batch_observer(entry.name, entry.version))
            self.metrics.pending.labels(entry.name, entry.version).set_function(
                lambda b=entry.batcher: b.queued)
            self.metrics.watch_instances(entry.name, entry.version, entry.batcher.pool)
        self.metrics.in_flight.set_function(lambda: self.state.inflight)

    # -- lifecycle ------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def lifespan(self, app):
        # Decoding runs in threads; a few at a time bounds the memory that large images take.
        self.decode_limiter = anyio.CapacityLimiter(max(2, os.cpu_count() or 2))
        for entry in self.repository.entries():
            await decide_batching(entry, self.config)
            entry.batcher.start()
        yield
        for entry in self.repository.entries():
            await entry.batcher.stop()

    def routes(self) -> list[Route]:
        model = "/v2/models/{name}"
        versioned = "/v2/models/{name}/versions/{version}"
        routes = [Route("/", page.index), Route("/v2/health/live", self.live),
                  Route("/v2/health/ready", self.ready), Route("/v2", self.server_metadata),
                  Route("/metrics", self.metrics_page), Route("/openapi.json", self.openapi_page),
                  Route("/v2/models", self.model_index),
                  Route("/v2/repository/index", self.repository_index, methods=["POST"]),
                  Route("/v2/repository/models/{name}/{action:str}", self.repository_control,
                        methods=["POST"])]
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
        for entry in self.repository.entries():
            if entry.batcher.problem is not None:
                return error_response(entry.batcher.unavailable())
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
            "instances": {"threads": entry.batcher.plan.threads, "plan": entry.batcher.plan.reason,
                          "spin_wait": self.config.spin_wait,
                          **entry.batcher.pool.describe()},
            "batching": entry.batcher.decision,
        })

    async def model_ready(self, request: Request) -> Response:
        entry = self.entry(request)
        if self.state.draining:
            return error_response(Unavailable(f"model {entry.name!r}: the server is shutting down"))
        if entry.batcher.problem is not None:
            return error_response(entry.batcher.unavailable())
        return JSONResponse({"name": entry.name, "ready": True})

    async def model_config(self, request: Request) -> Response:
        entry = self.entry(request)
        return JSONResponse({
            "name": entry.name, "platform": entry.platform, "max_batch_size": self.config.batch_limit,
            "input": [{"name": entry.input_name, "data_type": f"TYPE_{entry.datatype}",
                       "format": "FORMAT_NHWC", "dims": entry.input_shape[1:]}],
            "output": [{"name": entry.output_name, "data_type": "TYPE_FP32", "dims": [len(entry.labels)]}],
            "instance_group": [{"count": entry.batcher.pool.size, "kind": _kind(entry)}],
            **({"dynamic_batching": {"max_queue_delay_microseconds": int(self.config.max_queue_delay_ms * 1000)}}
               if entry.batcher.decision["enabled"] else {}),
            "parameters": {"labels": {"string_value": json.dumps(entry.labels)}},
        })

    async def metrics_page(self, request: Request) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(self.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    async def openapi_page(self, request: Request) -> Response:
        return JSONResponse(openapi.document(__version__))

    # -- the model repository extension ---------------------------------------
    async def repository_index(self, request: Request) -> Response:
        """Triton's index: every model version with its state; ``{"ready": true}`` keeps ready ones."""
        body = await read_body(request, INDEX_BODY_BYTES, self.config.body_timeout_s)
        ready_only = False
        if body.strip():
            ready_only = parse_json(body).get("ready", False)
            if not isinstance(ready_only, bool):
                raise BadRequest(f"'ready' must be true or false; received {json.dumps(ready_only)[:40]}")
        rows = []
        for name in sorted(self.repository.models):
            for version in self.repository.versions(name):
                batcher = self.repository.get(name, version).batcher
                if batcher.ready or not ready_only:
                    rows.append({"name": name, "version": version, "reason": batcher.problem or "",
                                 "state": "READY" if batcher.ready else "UNAVAILABLE"})
        return JSONResponse(rows)

    async def repository_control(self, request: Request) -> Response:
        """Load and unload: refused, as Triton refuses them when model control is off."""
        name, action = request.path_params["name"], request.path_params["action"]
        if action not in ("load", "unload"):
            raise HTTPException(404)
        self.repository.get(name)  # 404 for an unknown model
        raise BadRequest(f"explicit model load / unload is not allowed: graft serve loads every model "
                         f"under MODEL_OR_REPOSITORY at startup; restart it to {action} {name!r}")

    # -- inference ------------------------------------------------------------
    async def infer(self, request: Request) -> Response:
        return await self._run(request, self._infer)

    async def classify(self, request: Request) -> Response:
        return await self._run(request, self._classify)

    async def _run(self, request: Request, handler) -> Response:
        """Resolve the model, run ``handler`` and count the outcome in the metrics."""
        entry = self.entry(request)
        start, reason, watch = time.perf_counter(), None, ClientWatch()
        try:
            return await handler(request, entry, time.monotonic(), watch)
        except GraftError as exc:
            error = as_server_error(exc)
            reason = error.reason
            return error_response(error)
        except asyncio.CancelledError:  # the task itself was cancelled mid-request: not a success
            reason = "CANCELED"
            raise
        except Exception:
            reason = "BACKEND"
            raise
        finally:
            watch.close()
            self.metrics.request_done(entry.name, entry.version, time.perf_counter() - start, reason)

    def _deadline(self, arrived: float, timeout_us: int | None = None) -> float:
        """Triton's rule: ``timeout`` (microseconds) may shorten the server's timeout; 0 sets none."""
        timeout_s = self.config.timeout_ms / 1000
        if timeout_us:
            timeout_s = min(timeout_s, timeout_us / 1e6)
        return arrived + timeout_s

    async def _body(self, request: Request, watch: ClientWatch) -> bytes:
        body = await read_body(request, self.config.max_body_bytes, self.config.body_timeout_s)
        watch.start(request)
        return body

    async def _decode(self, entry: ModelEntry, images: list[bytes], deadline: float,
                      watch: ClientWatch) -> np.ndarray | Deferred:
        """Decoded pixels when requests are combined (a batch gathers decoded images); else the
        decoding itself, done by the instance that runs the model (one thread hop less)."""
        work = functools.partial(decode_images, entry, images, self.config.max_request_pixels,
                                 deadline, watch.gone)
        if not entry.batcher.combines:
            return Deferred(Encoded(images, self.config.max_request_pixels, deadline), work)
        return await watch.run(anyio.to_thread.run_sync(work, limiter=self.decode_limiter))

    async def _infer(self, request: Request, entry: ModelEntry, arrived: float,
                     watch: ClientWatch) -> Response:
        with entry.batcher.arriving():
            body = await self._body(request, watch)
            header = request.headers.get(HEADER_LENGTH)
            limit = self.config.batch_limit
            if len(body) > PARSE_IN_THREAD_BYTES:
                parsed = await run_in_threadpool(parse_infer, body, header, entry, limit)
            else:
                parsed = parse_infer(body, header, entry, limit)
            deadline = self._deadline(arrived, parsed.timeout_us)
            pixels = parsed.pixels
            if pixels is None:
                pixels = await self._decode(entry, parsed.images, deadline, watch)
        probs, _ = await watch.run(entry.batcher.submit(pixels, deadline))
        content, headers = infer_response(entry, parsed, probs)
        return Response(content, headers=headers)

    async def _classify(self, request: Request, entry: ModelEntry, arrived: float,
                        watch: ClientWatch) -> Response:
        top_k = _top_k(request.query_params.get("top_k"), len(entry.labels))
        deadline = self._deadline(arrived)
        with entry.batcher.arriving():
            body = await self._body(request, watch)
            names, images = await uploaded_images(request, body)
            pixels = await self._decode(entry, images, deadline, watch)
        probs, _ = await watch.run(entry.batcher.submit(pixels, deadline))
        results = [{"filename": name, "predictions": [{"label": p.label, "score": p.score} for p in row]}
                   for name, row in zip(names, entry.classifier.top_k(probs, top_k))]
        return JSONResponse({"model_name": entry.name, "model_version": entry.version, "results": results})


def _kind(entry: ModelEntry) -> str:
    return "KIND_GPU" if entry.classifier.device in ("cuda", "tensorrt") else "KIND_CPU"


def _top_k(value: str | None, classes: int) -> int:
    if value is None:
        return min(5, classes)
    if not value.isdigit() or not 1 <= int(value) <= 1000:
        raise BadRequest(f"top_k must be an integer from 1 to 1000; received {value[:40]!r}")
    return min(int(value), classes)


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
