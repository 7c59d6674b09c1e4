"""Keep native libraries' start-up lines out of graft's output (standard library only).

TensorFlow prints its C++ start-up lines (the absl notice, oneDNN, the CUDA
stub) straight to file descriptor 2 while it is imported, twice, whatever
``TF_CPP_MIN_LOG_LEVEL`` says; the TFLite converter prints a line to file
descriptor 1; LiteRT announces its XNNPACK delegate on stderr. Python cannot
filter what native code writes, so these moments run with the descriptor
pointed at a temporary file. What was captured is shown when ``GRAFT_DEBUG`` is
set (``graft --debug``) or when the call failed, so nothing that explains a
failure is lost.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import threading

_lock = threading.Lock()


@contextlib.contextmanager
def native_output(fds: tuple[int, ...] = (2,)):
    """Run the block with ``fds`` (1: stdout, 2: stderr) sent to a temporary file."""
    with _lock, tempfile.TemporaryFile() as sink:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        saved = {fd: os.dup(fd) for fd in fds}
        failed = True
        try:
            for fd in fds:
                os.dup2(sink.fileno(), fd)
            yield
            failed = False
        finally:
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)
            if failed or os.environ.get("GRAFT_DEBUG"):
                sink.seek(0)
                text = sink.read().decode("utf-8", "replace")
                if text:
                    sys.stderr.write(text)
                    sys.stderr.flush()


def import_tensorflow():
    """``import tensorflow`` without its start-up lines (once per process)."""
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with native_output((2,)):
        import tensorflow
    return tensorflow
