"""``graft serve``: the Open Inference Protocol over HTTP, with dynamic batching.

``serve(path, config)`` loads a model file, a bundle or a repository of
``name/version/`` bundles and answers on ``config.host:config.port`` until
SIGTERM or SIGINT. On the signal, readiness turns 503, requests in flight (and
any that still arrive) are answered, and once none is left (or after
``config.drain_timeout_s``) the server stops and ``serve`` returns.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import time

from graft.runtime.server.config import ServerConfig

SWITCH_INTERVAL_S = 0.0005

__all__ = ["ServerConfig", "serve", "create_app", "load_repository", "uvicorn_config"]


def create_app(repository, config: ServerConfig | None = None):
    """The ASGI app for a loaded repository, and the ``Server`` behind it (routes, state, metrics)."""
    from graft.runtime.server.app import create_app as _create_app

    return _create_app(repository, config)


def load_repository(path, config: ServerConfig):
    """Load the model file, bundle or ``NAME/VERSION/`` repository at ``path`` as ``config`` says."""
    from graft.runtime.server.repository import load_repository as _load

    return _load(path, device=config.device, model_threads=config.model_threads, max_pixels=config.max_pixels,
                 artifacts=config.artifacts)


def uvicorn_config(app, config: ServerConfig):
    """uvicorn's settings for ``app``, with the process-wide limit of ``config.limit_concurrency``.

    uvicorn answers 503 to a request when its own connection makes the count of
    open connections reach its limit, so it is given one more than ours: with
    ``limit_concurrency=N``, N connections are served and a request on one more gets 503.
    """
    import uvicorn

    limit = None if config.limit_concurrency is None else config.limit_concurrency + 1
    return uvicorn.Config(app, log_level=config.log_level, access_log=False, lifespan="on",
                          timeout_graceful_shutdown=config.drain_timeout_s, limit_concurrency=limit)


def bind_socket(host: str, port: int) -> socket.socket:
    from graft.runtime.server.errors import ServerError

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets whose proto says TCP;
    # without it, a response's headers and body meet Nagle's algorithm (40 ms stalls).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ServerError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); "
                          "pick another --port or --host") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(path, config: ServerConfig | None = None, echo=print) -> None:
    """Load the models under ``path`` and serve them until SIGTERM/SIGINT."""
    config = config or ServerConfig()
    _log_to_stderr(config.log_level)
    # The event loop gives up the GIL at every socket call; a thread holding it (decoding,
    # preparing a model call) keeps it for up to the switch interval (5 ms by default) before
    # the loop gets it back. 0.5 ms keeps the loop answering while every core computes.
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    sock = bind_socket(config.host, config.port)  # a taken port fails before models load
    try:
        repository = load_repository(path, config)
        app, routes = create_app(repository, config)
        from graft.runtime.server.pools import settle

        for entry in repository.entries():  # instances and batching are logged before serving starts
            settle(entry, config)
    except BaseException:
        sock.close()
        raise
    host, port = sock.getsockname()[:2]
    models = ", ".join(f"{e.name}:{e.version}" for e in repository.entries())
    server = _draining_server_class()(uvicorn_config(app, config), routes.state, config.drain_timeout_s)
    for entry in repository.entries():
        echo(f"model {entry.name}:{entry.version} runs {entry.classifier.describe_choice()}")
    echo(f"serving {models} on http://{host if ':' not in host else f'[{host}]'}:{port}")
    sys.stdout.flush()
    server.run(sockets=[sock])


def _log_to_stderr(level: str) -> None:
    """The server's own log lines (instances, batching, failures) on stderr, as uvicorn's are."""
    import logging

    logger = logging.getLogger("graft.serve")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(level.upper())


def _draining_server_class():
    import uvicorn

    class DrainingServer(uvicorn.Server):
        """On the first SIGTERM/SIGINT: readiness 503, wait for in-flight requests, then stop.

        uvicorn itself would stop at once and re-raise the signal (exit status 143);
        a drained shutdown exits 0. A second signal stops at once.
        """

        def __init__(self, config, state, drain_timeout_s: float):
            super().__init__(config)
            self.state, self.drain_timeout_s = state, drain_timeout_s
            self._loop = None
            self._drain_task = None

        async def serve(self, sockets=None):
            self._loop = asyncio.get_running_loop()
            await super().serve(sockets)

        def handle_exit(self, sig, frame):
            if self.state.draining or self._loop is None:
                self.should_exit = self.force_exit = True
                return
            self.state.draining = True
            self._loop.call_soon_threadsafe(self._start_drain)

        def _start_drain(self):
            self._drain_task = self._loop.create_task(self._drain())

        async def _drain(self):
            deadline = time.monotonic() + self.drain_timeout_s
            while self.state.inflight > 0 and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            self.should_exit = True

    return DrainingServer
