"""The bundle: a directory with model.keras, graft.json and exports/.

``graft.json`` (the manifest) is the single record of a model. Each exported
file also carries the portable part of it (labels, input spec, preprocessing),
so one file is enough to deploy. This module imports only the standard library.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator

from graft.errors import BundleError

SCHEMA_VERSION = 1
MANIFEST_NAME = "graft.json"
KERAS_NAME = "model.keras"
EXPORTS_DIR = "exports"
METADATA_KEY = "graft.manifest"  # key of the embedded manifest in exported files

# What travels inside each exported file: enough to preprocess and label.
PORTABLE_KEYS = ("schema_version", "name", "created", "labels", "input", "output",
                 "preprocessing", "backbone", "graft_version")
REQUIRED_KEYS = ("schema_version", "labels", "input", "preprocessing")
RESIZE_MODES = ("stretch", "crop")
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos")


def preprocessing_contract(height: int, width: int, resize: str = "stretch",
                           interpolation: str = "bilinear") -> dict:
    """The preprocessing every caller of the model must apply (and the runtime does)."""
    return {
        "size": [int(height), int(width)],
        "resize": resize,
        "interpolation": interpolation,
        "channel_order": "RGB",
        "range": [0, 255],
        "exif_orientation": True,
        "alpha": "drop",
    }


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place only on success.

    An interrupted or failed write leaves neither a half-written file nor the
    temporary one behind. ``suffix`` ends the temporary name (some writers check it).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a bundle is for others to read too
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())  # the bytes are on disk before the name points at them
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def validate_manifest(manifest: object, source: str) -> dict:
    """Check the fields every reader relies on; raise BundleError naming the problem."""
    if not isinstance(manifest, dict):
        raise BundleError(f"{source}: the manifest is not a JSON object")
    missing = [key for key in REQUIRED_KEYS if key not in manifest]
    if missing:
        raise BundleError(f"{source}: the manifest lacks {', '.join(missing)}; "
                          "rebuild the bundle with `graft build`")
    version = manifest["schema_version"]
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise BundleError(f"{source}: manifest schema_version {version!r} is newer than this "
                          f"graft understands ({SCHEMA_VERSION}); upgrade graft")
    labels = manifest["labels"]
    if not isinstance(labels, list) or len(labels) < 2 or not all(isinstance(x, str) for x in labels):
        raise BundleError(f"{source}: manifest labels must be a list of at least two strings")
    prep = manifest["preprocessing"]
    size = prep.get("size") if isinstance(prep, dict) else None
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)):
        raise BundleError(f"{source}: manifest preprocessing.size must be [height, width]; "
                          f"received {size!r}")
    if prep.get("resize", "stretch") not in RESIZE_MODES:
        raise BundleError(f"{source}: unknown resize mode {prep.get('resize')!r}; "
                          f"allowed: {', '.join(RESIZE_MODES)}")
    if prep.get("interpolation", "bilinear") not in INTERPOLATIONS:
        raise BundleError(f"{source}: unknown interpolation {prep.get('interpolation')!r}; "
                          f"allowed: {', '.join(INTERPOLATIONS)}")
    return manifest


def parse_manifest(text: str | bytes, source: str) -> dict:
    try:
        manifest = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{source}: the manifest is not valid JSON ({exc})") from None
    return validate_manifest(manifest, source)


def is_bundle(path: str | os.PathLike) -> bool:
    return Path(path, MANIFEST_NAME).is_file()


def read_manifest(bundle: str | os.PathLike) -> dict:
    path = Path(bundle, MANIFEST_NAME)
    if not path.is_file():
        raise BundleError(f"{bundle}: not a graft bundle (no {MANIFEST_NAME}); "
                          "create one with `graft build DATA -o BUNDLE`")
    return parse_manifest(path.read_bytes(), str(path))


def write_manifest(bundle: str | os.PathLike, manifest: dict) -> None:
    validate_manifest(manifest, str(bundle))
    text = json.dumps(manifest, indent=2, sort_keys=False) + "\n"
    atomic_write_bytes(Path(bundle, MANIFEST_NAME), text.encode())


def portable_manifest(manifest: dict) -> dict:
    """The part of the manifest that is embedded in every exported file."""
    return {key: manifest[key] for key in PORTABLE_KEYS if key in manifest}


def record_export(bundle: str | os.PathLike, entry: dict) -> dict:
    """Add or replace (by relative path) an exported artifact's row in graft.json."""
    manifest = read_manifest(bundle)
    rows = [row for row in manifest.get("exports", []) if row.get("path") != entry["path"]]
    rows.append(entry)
    manifest["exports"] = sorted(rows, key=lambda row: row["path"])
    write_manifest(bundle, manifest)
    return manifest


def find_export(manifest: dict, fmt: str, precision: str = "float32") -> dict | None:
    for row in manifest.get("exports", []):
        if row.get("format") == fmt and row.get("precision") == precision:
            return row
    return None
