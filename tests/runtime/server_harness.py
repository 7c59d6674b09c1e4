"""Start `graft serve` for tests: a subprocess on a free loopback port, or uvicorn in a thread."""

from __future__ import annotations

import contextlib
import os
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[2]


class ServerProcess:
    """``python -m graft serve ... --port 0``; the URL is read from its first line."""

    def __init__(self, model: str | os.PathLike, *args: str, timeout: float = 60.0):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])), PYTHONUNBUFFERED="1")
        command = [sys.executable, "-m", "graft", "serve", str(model), "--port", "0",
                   "--log-level", "warning", *args]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True, env=env, cwd=REPO_ROOT)
        self.url = self._read_url(timeout)

    def _read_url(self, timeout: float) -> str:
        found: list[str] = []

        def read():
            for line in self.process.stdout:
                if " on http://" in line:
                    found.append(line.rsplit(" on ", 1)[1].strip())
                    return

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(timeout)
        if not found:
            self.process.kill()
            raise RuntimeError(f"graft serve did not start: {self.process.stderr.read()[-2000:]}")
        return found[0]

    def terminate(self, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


class ThreadServer:
    """uvicorn in a thread around an app built in this process (to reach its internals).

    uvicorn gets the settings ``graft serve`` gives it (``uvicorn_config``), so
    process-wide limits such as ``limit_concurrency`` apply here too.
    """

    def __init__(self, app, config=None):
        import dataclasses

        import uvicorn

        from graft.runtime.server import ServerConfig, bind_socket, uvicorn_config

        config = dataclasses.replace(config or ServerConfig(), log_level="warning", drain_timeout_s=5)
        self.sock = bind_socket("127.0.0.1", 0)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn_config(app, config))
        self.server.install_signal_handlers = lambda: None  # older uvicorn
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        wait_ready(self.url)

    def _run(self):
        import asyncio

        asyncio.run(self.server.serve(sockets=[self.sock]))

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@contextlib.contextmanager
def thread_server(model: str | os.PathLike, **settings):
    """Load ``model`` with ``ServerConfig(**settings)`` and serve it in a thread.

    Yields (ThreadServer, Server): the running server and the app's internals
    (``repository``, ``metrics``, each entry's ``batcher``).
    """
    from graft.runtime.server import ServerConfig, create_app, load_repository

    config = ServerConfig(**settings)
    app, internals = create_app(load_repository(model, config), config)
    server = ThreadServer(app, config)
    try:
        yield server, internals
    finally:
        server.stop()


def metric(url: str, name: str) -> float:
    """One sample of /metrics by its full name with labels (0 when absent)."""
    for line in httpx.get(url + "/metrics", timeout=5).text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def wait_for(condition, timeout: float = 10.0, what: str = "the condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"{what} did not hold within {timeout} s")


def wait_ready(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/v2/health/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not become ready")


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels but holds almost no data (a bomb's shape)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) \
        + chunk(b"IEND", b"")


def raw_request(method: str, path: str, body: bytes = b"", headers: dict | None = None) -> bytes:
    """An HTTP/1.1 request as bytes, for tests that drive a socket by hand."""
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def image_bytes(color: str, size=(40, 30), fmt: str = "PNG") -> bytes:
    import io

    from PIL import Image

    rgb = {"red": (220, 20, 20), "green": (20, 220, 20), "blue": (20, 20, 220)}[color]
    buffer = io.BytesIO()
    Image.new("RGB", size, rgb).save(buffer, format=fmt)
    return buffer.getvalue()
