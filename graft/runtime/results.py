"""Input expansion and result files for `graft predict`."""

from __future__ import annotations

import csv
import glob
import json
from pathlib import Path
from typing import Iterable, Iterator

from graft.errors import GraftError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
LIST_SUFFIXES = {".txt", ".csv"}


def expand_inputs(inputs: Iterable[str]) -> list[Path]:
    """Files, directories (recursive, image suffixes only), globs, or .txt/.csv lists of paths."""
    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            paths.extend(sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()))
        elif path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
            paths.extend(_read_list(path))
        elif path.exists():
            paths.append(path)
        elif glob.has_magic(item):
            matches = sorted(glob.glob(item, recursive=True))
            if not matches:
                raise GraftError(f"{item}: the pattern matches no file")
            paths.extend(Path(m) for m in matches)
        else:
            paths.append(path)  # reported as a per-file error, not fatal
    return paths


def _read_list(path: Path) -> Iterator[Path]:
    with open(path, newline="") as fh:
        for row in csv.reader(fh):
            if not row or not row[0].strip() or row[0].strip().lower() == "path":
                continue
            entry = Path(row[0].strip())
            yield entry if entry.is_absolute() else path.parent / entry


def write_results(rows: list[dict], output: str) -> None:
    suffix = Path(output).suffix.lower()
    if suffix not in (".csv", ".jsonl"):
        raise GraftError(f"{output}: unknown output format {suffix!r}; use .csv or .jsonl")
    from graft.bundle import atomic_path

    with atomic_path(output) as tmp, open(tmp, "w", newline="") as fh:
        if suffix == ".jsonl":
            for row in rows:
                fh.write(json.dumps({"path": row["path"],
                                     "labels": [p.label for p in row["predictions"]],
                                     "scores": [p.score for p in row["predictions"]],
                                     "error": row["error"]}) + "\n")
        else:
            writer = csv.writer(fh)
            writer.writerow(["path", "labels", "scores", "error"])
            for row in rows:
                writer.writerow([row["path"], "|".join(p.label for p in row["predictions"]),
                                 "|".join(f"{p.score:.6f}" for p in row["predictions"]), row["error"]])
