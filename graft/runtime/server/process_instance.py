"""Instances in worker processes: the server's side of ``worker``.

``start_instances`` starts one ``python -m graft.runtime.server.worker`` per
instance (all at once, then waits for each to load its engine, up to
``START_TIMEOUT_S``); a ``ProcessInstance`` sends a batch to its process from
the instance's thread and waits for the answer. A process that exits while it
runs a batch (killed, out of memory, crashed), or stays silent past the batch's
deadline plus ``GRACE_S``, raises ``InstanceLost``, and the pool replaces it.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np

from graft.runtime.server.errors import ServerError
from graft.runtime.server.instances import Deferred, Instance

log = logging.getLogger("graft.serve")

START_TIMEOUT_S = 120.0   # to start Python, import the runtime and load the engine
STOP_TIMEOUT_S = 5.0      # after the server closes its end, before the process is killed
GRACE_S = 5.0             # past a batch's deadline, a silent process counts as hung
PACKAGE_ROOT = str(Path(__file__).resolve().parents[3])   # where `graft` imports from


class InstanceLost(RuntimeError):
    """The instance's process exited or stopped answering; the pool replaces it."""


class WorkerProcess:
    """A started worker process and the connection to it."""

    def __init__(self):
        parent, child = socket.socketpair()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [PACKAGE_ROOT,
                                                                        os.environ.get("PYTHONPATH")])))
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "graft.runtime.server.worker", str(child.fileno())],
                pass_fds=[child.fileno()], stdin=subprocess.DEVNULL, env=env)
        finally:
            child.close()
        self.conn = Connection(parent.detach())
        self.pid = self.process.pid

    def send(self, message) -> None:
        try:
            self.conn.send(message)
        except OSError as exc:
            raise InstanceLost(f"cannot reach its process ({self.exit_text() or exc})") from None

    def receive(self, timeout_s: float | None, waiting_for: str):
        """The process's reply; ``InstanceLost`` if it exits or says nothing for ``timeout_s``."""
        try:
            if timeout_s is not None and not self.conn.poll(max(0.0, timeout_s)):
                raise InstanceLost(f"its process (pid {self.pid}) said nothing for "
                                   f"{timeout_s:.0f} s while {waiting_for}")
            kind, value = self.conn.recv()
        except (EOFError, OSError):
            raise InstanceLost(f"its process {self.exit_text(wait_s=1.0)} while "
                               f"{waiting_for}") from None
        if kind == "error":
            raise value
        if kind == "broken":
            raise InstanceLost(value)
        return value

    def exit_text(self, wait_s: float = 0.0) -> str | None:
        """'exited with status 1' / 'was killed by SIGKILL', or None while it runs."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(wait_s)
        code = self.process.returncode
        if code is None:
            return None
        if code < 0:
            with contextlib.suppress(ValueError):
                return f"(pid {self.pid}) was killed by {signal.Signals(-code).name}"
        return f"(pid {self.pid}) exited with status {code}"

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Close the connection (the process ends on its own); kill it if it does not."""
        self.conn.close()
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.close()
        with contextlib.suppress(OSError):
            self.process.kill()
        threading.Thread(target=self.process.wait, daemon=True).start()  # reap it


class ProcessInstance(Instance):
    """An instance whose decoding and model calls run in its own worker process."""

    kind = "process"

    def __init__(self, index: int, worker: WorkerProcess, name: str, limit: int,
                 cores: tuple[int, ...] | None = None):
        super().__init__(index, self._run_pixels, name)
        self.worker, self.limit, self.pid, self.cores = worker, limit, worker.pid, cores
        if cores:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(worker.pid, cores)  # its threads started from now on keep to them

    def execute(self, parts: list, deadline: float | None) -> np.ndarray:
        work = [p.encoded if isinstance(p, Deferred) else p for p in parts]
        self.worker.send(("run", work, self.limit))
        timeout = None if deadline is None else deadline - time.monotonic() + GRACE_S
        return self.worker.receive(timeout, "it ran a batch")

    def _run_pixels(self, pixels: np.ndarray) -> np.ndarray:
        return self.execute([pixels], None)

    def close(self) -> None:
        """Taken out of service: the process is killed at once."""
        super().close()
        self.worker.kill()

    def stop(self) -> None:
        super().stop()
        self.worker.stop()


def opening(name: str, classifier, device: str, threads: int | None, engine_options: dict) -> tuple:
    """The message that makes a worker load ``classifier``'s model file (sent without its engine)."""
    bare = copy.copy(classifier)
    bare.engine = None
    return ("open", name, bare, device, threads, engine_options)


def start_workers(count: int, name: str, message: tuple,
                  timeout_s: float = START_TIMEOUT_S) -> list[WorkerProcess]:
    """``count`` worker processes, started together, each with its engine loaded."""
    started = time.monotonic()
    workers = [WorkerProcess() for _ in range(count)]
    try:
        for worker in workers:
            worker.send(message)
        for worker in workers:
            remaining = timeout_s - (time.monotonic() - started)
            worker.receive(remaining, "it loaded the model (see the log above)")
    except InstanceLost as exc:
        for worker in workers:
            worker.kill()
        raise ServerError(f"model {name!r}: an instance could not start: {exc}") from None
    except BaseException:  # the model file itself was refused (e.g. changed since it was loaded)
        for worker in workers:
            worker.kill()
        raise
    log.info("model %s: %d instance process(es) ready in %.1f s (pids %s)", name, count,
             time.monotonic() - started, ", ".join(str(w.pid) for w in workers))
    return workers
