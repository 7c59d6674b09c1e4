"""Inputs of batch inference: files, directories (recursive), globs, or .txt/.csv lists of paths.

Expanded once, in a stable order, with duplicates dropped (a path is the key of
its row). A path that does not exist is kept: it becomes a row with an error.
"""

from __future__ import annotations

import csv
import glob
import os
from pathlib import Path
from typing import Iterable, Iterator

from graft.errors import GraftError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
LIST_SUFFIXES = {".txt", ".csv"}
ENCODING = {"encoding": "utf-8", "errors": "surrogateescape"}  # any file name round-trips


# ----------------------------------------------------------------------- inputs
def expand_inputs(inputs: Iterable[str | os.PathLike]) -> list[str]:
    """Files, directories (recursive, image suffixes only), globs, or .txt/.csv lists.

    Returns normalised path strings in a stable order, each once. A path that
    does not exist is kept: it becomes a row with an error, not a fatal one.
    """
    seen: dict[str, None] = {}
    for item in inputs:
        for path in _expand_one(str(item)):
            seen.setdefault(os.path.normpath(path), None)
    return list(seen)


def _expand_one(item: str) -> Iterator[str]:
    path = Path(item)
    if path.is_dir():
        yield from _walk(path)
    elif path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
        yield from _read_list(path)
    elif path.exists() or not glob.has_magic(item):
        yield item
    else:
        matches = sorted(glob.glob(item, recursive=True))
        if not matches:
            raise GraftError(f"{item}: the pattern matches no file")
        for match in matches:
            yield from (_walk(Path(match)) if os.path.isdir(match) else [match])


def _walk(directory: Path) -> Iterator[str]:
    for root, dirs, files in os.walk(directory):
        dirs.sort()
        for name in sorted(files):
            if os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES:
                yield os.path.join(root, name)



def _read_list(path: Path) -> Iterator[str]:
    """A .txt (one path per line, taken as it is) or .csv (path in the first column, optional header)."""
    with open(path, newline="", **ENCODING) as fh:
        if path.suffix.lower() == ".csv":
            entries = (row[0].strip() if row else "" for row in csv.reader(fh))
        else:  # commas and quotes are legal in file names
            entries = (line.rstrip("\r\n") for line in fh)
        for entry in entries:
            if not entry.strip() or entry.strip().lower() == "path":
                continue
            yield entry if os.path.isabs(entry) else os.path.join(path.parent, entry)


def chunked(items: Iterable, size: int) -> Iterator[list]:
    chunk: list = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
