"""Training data: class folders or a ``path,label`` CSV, and a stable split.

The split is decided per file from a hash of its path relative to the data
root, so it is deterministic, stratified in expectation (each class is split by
the same fractions) and adding images never moves existing ones between splits.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path

from graft.bundle import SPLITS
from graft.errors import DataError

MIN_IMAGES_PER_CLASS = 2


@dataclass(frozen=True)
class Sample:
    path: Path     # where to read the file
    rel: str       # path relative to the data root: the split key and the report name
    label: str


def scan(data: str | Path) -> list[Sample]:
    """List the samples of a class-folder tree or a CSV; raise DataError for unusable data."""
    data = Path(data)
    if not data.exists():
        raise DataError(f"{data}: no such folder or CSV file")
    samples = _scan_csv(data) if data.is_file() else _scan_folders(data)
    labels = sorted({s.label for s in samples})
    for label in labels:
        check_label(label, data)
    if not samples:
        raise DataError(f"{data}: no images found; expected one sub-folder per class "
                        "(DATA/cat/*.jpg, DATA/dog/*.jpg) or a CSV of path,label")
    if len(labels) < 2:
        raise DataError(f"{data}: found a single class ({labels[0]!r}); a classifier needs "
                        "at least two classes")
    return samples


def check_label(label: str, source) -> None:
    """Labels travel in result files (CSV joins them with '|'), labels.txt and HTTP answers:
    no '|', no line breaks or other control characters, no surrounding spaces."""
    bad = [ch for ch in label if ch == "|" or ord(ch) < 32 or ord(ch) == 127]
    if bad or label != label.strip() or not label:
        raise DataError(f"{source}: class {label!r} cannot be a label (no '|', control characters, "
                        "line breaks or surrounding spaces); rename it")


def _scan_folders(root: Path) -> list[Sample]:
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{root}: no class sub-folders; put each class's images in "
                        "DATA/<class name>/")
    samples = []
    for folder in classes:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and not path.name.startswith("."):
                samples.append(Sample(path, path.relative_to(root).as_posix(), folder.name))
    return samples


def _scan_csv(path: Path) -> list[Sample]:
    samples = []
    with open(path, newline="", encoding="utf-8-sig") as fh:
        for number, row in enumerate(csv.reader(fh), start=1):
            if not row or not "".join(row).strip():
                continue
            if len(row) < 2:
                raise DataError(f"{path}:{number}: expected 'path,label'; received {row!r}")
            file, label = row[0].strip(), row[1].strip()
            if number == 1 and (file.lower(), label.lower()) == ("path", "label"):
                continue  # header
            if not label:
                raise DataError(f"{path}:{number}: empty label for {file!r}")
            file_path = Path(file) if Path(file).is_absolute() else path.parent / file
            samples.append(Sample(file_path, Path(file).as_posix(), label))
    return samples


def split_of(rel: str, val_split: float, test_split: float) -> str:
    """'train', 'val' or 'test' for a relative path; stable across runs and dataset growth."""
    digest = hashlib.sha256(rel.encode("utf-8")).digest()
    fraction = int.from_bytes(digest[:8], "big") / 2**64
    if fraction < test_split:
        return "test"
    if fraction < test_split + val_split:
        return "val"
    return "train"


def check_class_counts(counts: dict[str, dict[str, int]], skipped: list[dict]) -> None:
    """Raise DataError naming the first class left with too few usable images."""
    for label, per_split in counts.items():
        total = sum(per_split.values())
        if total < MIN_IMAGES_PER_CLASS:
            bad = [row for row in skipped if row["label"] == label]
            why = f"; {len(bad)} skipped, e.g. {bad[0]['path']}: {bad[0]['reason']}" if bad else ""
            raise DataError(f"class {label!r} has {total} usable image(s); at least "
                            f"{MIN_IMAGES_PER_CLASS} are needed{why}")
        if per_split.get("train", 0) == 0:
            raise DataError(f"class {label!r} has no image in the training split "
                            f"({total} usable); add images or lower --val-split/--test-split")


def class_counts(labels: list[str], samples: list[Sample], splits: list[str]) -> dict[str, dict[str, int]]:
    """{label: {train: n, val: n, test: n}} for usable samples and their splits."""
    counts = {label: {split: 0 for split in SPLITS} for label in labels}
    for sample, split in zip(samples, splits):
        counts[sample.label][split] += 1
    return counts
