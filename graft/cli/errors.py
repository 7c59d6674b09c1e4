"""How the CLI reports failures: one line on stderr and an exit code.

Exit 2: bad usage or input the caller can fix. Exit 1: a check that ran and
failed, or the machine failed the command (disk full, permission denied).
``graft --debug`` shows the traceback, with every cause, instead.
"""

from __future__ import annotations

import errno
import importlib.util

from graft.errors import GraftError, first_line

# Modules of the optional extras, and the extra that installs each.
EXTRAS = {"tensorflow": "build", "keras": "build", "tf2onnx": "build", "onnx": "build",
          "skimage": "build", "ai_edge_litert": "litert", "starlette": "serve",
          "uvicorn": "serve", "prometheus_client": "serve", "multipart": "serve", "ray": "ray",
          "pyarrow": "parquet", "matplotlib": "report"}
# OS errors that say the machine failed the command, not that the input was wrong.
SYSTEM_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EIO}


def exit_code(exc: BaseException) -> int:
    if isinstance(exc, GraftError):
        return exc.exit_code
    if isinstance(exc, OSError) and exc.errno in SYSTEM_ERRNOS:
        return 1
    return 2


def one_line(exc: BaseException) -> str:
    """GraftErrors say it all; a missing or broken extra, or an OS error, gets what to do."""
    if isinstance(exc, ImportError) and not isinstance(exc, GraftError):
        return _import_problem(exc)
    if isinstance(exc, OSError) and not isinstance(exc, GraftError):
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror or first_line(exc)}"
    return first_line(exc, limit=2000)


def _import_problem(exc: ImportError) -> str:
    top = (exc.name or "").split(".")[0]
    if isinstance(exc, ModuleNotFoundError) and top in EXTRAS and importlib.util.find_spec(top) is None:
        return f"this command needs {top}, which is not installed; pip install 'graft[{EXTRAS[top]}]'"
    return (f"{top or 'a module'} is installed but failed to import ({first_line(exc, 300)}); "
            "reinstall it, or run with --debug for the traceback")
