"""splits.json: which file went to train, val or test, and what the model said of each test file.

    {"root": "/data/pets", "samples": [{"path": "cat/1.jpg", "file": "/data/pets/cat/1.jpg",
                                        "label": "cat", "split": "test",
                                        "predicted": "cat", "score": 0.93}, ...]}

``path`` is relative to the data root (the split key), ``file`` where it was
read. Test rows also carry the built model's prediction. Verification and int8
calibration read their images back from here; ``data_root`` re-roots ``path``
when the dataset moved.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from graft.bundle.files import atomic_write_bytes
from graft.errors import BundleError

SPLITS_NAME = "splits.json"
SPLITS = ("train", "val", "test")


def write_splits(bundle: str | os.PathLike, root: str | os.PathLike, rows: list[dict]) -> None:
    """Write splits.json atomically: ``rows`` are {path, file, label, split[, predicted, score]}."""
    document = {"root": str(root), "samples": rows}
    atomic_write_bytes(Path(bundle, SPLITS_NAME), json.dumps(document, indent=1).encode())


def read_splits(bundle: str | os.PathLike) -> dict:
    """The parsed splits.json; BundleError when it is missing or malformed."""
    path = Path(bundle, SPLITS_NAME)
    if not path.is_file():
        raise BundleError(f"{bundle}: no {SPLITS_NAME}; rebuild the bundle with `graft build`")
    try:
        document = json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path}: not valid JSON ({exc}); rebuild the bundle") from None
    if not isinstance(document, dict) or not isinstance(document.get("samples"), list):
        raise BundleError(f"{path}: expected an object with a 'samples' list; rebuild the bundle")
    return document


def split_rows(bundle: str | os.PathLike, split: str) -> list[dict]:
    """The rows of one split, in file order."""
    return [row for row in read_splits(bundle)["samples"] if row.get("split") == split]


def held_out_rows(bundle: str | os.PathLike, split: str = "test") -> tuple[list[dict], str]:
    """The rows of ``split``, or of the first non-empty of test, val, train (tiny datasets).

    Returns the rows and the split they came from.
    """
    samples = read_splits(bundle)["samples"]
    for name in [split] + [s for s in ("test", "val", "train") if s != split]:
        rows = [row for row in samples if row.get("split") == name]
        if rows:
            return rows, name
    raise BundleError(f"{bundle}: {SPLITS_NAME} lists no images")


def sample_file(row: dict, data_root: str | os.PathLike | None = None) -> Path:
    """Where to read a row's image: under ``data_root`` when the dataset moved, else where it was."""
    return Path(data_root, row["path"]) if data_root else Path(row["file"])
