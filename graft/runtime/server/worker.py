"""One model instance in a process of its own: it decodes and runs the model there.

The server's event loop, and every other instance, then share no interpreter
lock with it (measured on two cores: see docs/serve.md). The server
(``process_instance.ProcessInstance``) starts ``python -m
graft.runtime.server.worker FD``, where FD is its end of a socket pair, and
talks to it in ``multiprocessing.connection`` messages (pickled tuples):

    -> ("open", name, classifier, device, threads, engine_options)   <- ("ready", pid)
    -> ("run", parts, batch_limit)                               <- ("done", probabilities)
    -> ("probe", batch_limit)                                    <- ("done", batching decision)

``parts`` are pixel arrays, or ``Encoded`` images that this process decodes
under their request's limits. A ``GraftError`` (the request's fault: a bad
image, a passed deadline) comes back as ("error", exc) and the instance
carries on; anything else comes back as ("broken", text), and the server
replaces the instance. The process ignores SIGINT and SIGTERM (the server
drains its requests first) and ends when the server closes its end of the
socket, so it never outlives the server.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import sys
import traceback
from multiprocessing.connection import Connection
from pathlib import Path
from typing import NamedTuple

import numpy as np

from graft.errors import GraftError, IntegrityError


class Encoded(NamedTuple):
    """One request's encoded images, with the limits their decoding keeps."""

    images: list[bytes]
    max_request_pixels: int | None
    deadline: float | None   # time.monotonic(): the same clock in every process of the machine


class Model(NamedTuple):
    """What ``decoding.decode_images`` needs: the model's name and its classifier."""

    name: str
    classifier: object


def open_model(classifier, device: str, threads: int | None, engine_options: dict):
    """``classifier`` (sent without its engine) with an engine of its own on this process."""
    from graft.runtime.engines import open_engine

    source = Path(classifier.source)
    data = source.read_bytes()
    if classifier.sha256 and hashlib.sha256(data).hexdigest() != classifier.sha256:
        raise IntegrityError(f"{source}: the model file changed since the server loaded it; "
                             "restart the server to serve the new file")
    classifier.engine = open_engine(source, device=device, threads=threads, model_bytes=data,
                                    **engine_options)
    return classifier


def run(model: Model, parts: list, limit: int) -> np.ndarray:
    """Decode what is encoded, then one model call on all of it."""
    from graft.runtime.server.decoding import decode_images

    arrays = [decode_images(model, p.images, p.max_request_pixels, p.deadline)
              if isinstance(p, Encoded) else p for p in parts]
    return model.classifier.predict_pixels(arrays[0] if len(arrays) == 1 else np.concatenate(arrays), limit)


def probe(model: Model, limit: int) -> dict:
    """Whether batching pays for this model here (``batch_probe.decide``)."""
    from graft.runtime.server import batch_probe

    classifier = model.classifier
    height, width = classifier.input_size
    pixels = np.random.default_rng(0).integers(0, 256, (1, height, width, 3), dtype=np.uint8)
    shape = classifier.engine.input_shape
    fixed_batch = shape[0] if shape and isinstance(shape[0], int) else None
    return batch_probe.decide(lambda p: classifier.predict_pixels(p, limit), pixels, limit, fixed_batch)


def serve(conn: Connection) -> None:
    """Answer the server's messages until it closes the connection."""
    model = None
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        try:
            kind, *args = message
            if kind == "open":
                name, *opening = args
                model = Model(name, open_model(*opening))
                reply = ("ready", os.getpid())
            elif kind == "run":
                reply = ("done", run(model, *args))
            elif kind == "probe":
                reply = ("done", probe(model, *args))
            else:
                reply = ("broken", f"unknown message {kind!r}")
        except GraftError as exc:
            reply = ("error", exc)
        except Exception as exc:  # the engine broke: the server replaces this instance
            traceback.print_exc(file=sys.stderr)
            reply = ("broken", f"{type(exc).__name__}: {exc}")
        try:
            conn.send(reply)
        except (BrokenPipeError, OSError):
            return


def main(argv: list[str]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sock = socket.socket(fileno=int(argv[0]))
    serve(Connection(sock.detach()))


if __name__ == "__main__":  # import this module by its name, so the messages' classes are its own
    from graft.runtime.server.worker import main as worker_main

    worker_main(sys.argv[1:])
