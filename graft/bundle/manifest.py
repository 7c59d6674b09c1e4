"""graft.json, the manifest: the single record of a model.

Schema version, labels, input spec, preprocessing contract, backbone and
weights, training, dataset fingerprint, metrics, exports. The preprocessing
contract's ``size`` is the one record of the model's input size; the input spec
names the tensor, its dtype and layout. Each exported file also carries the
portable part of the manifest (``portable_manifest``).
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Iterator

from graft.bundle.files import atomic_write_bytes, locked
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


def input_spec(name: str = "pixels", dtype: str = "float32") -> dict:
    """The model input: an NHWC batch of RGB pixels; its size is ``preprocessing.size``."""
    return {"name": name, "dtype": dtype, "layout": "NHWC", "channels": 3}


def input_shape(manifest: dict) -> list:
    """[None, H, W, 3] from the preprocessing contract (the one record of the size)."""
    height, width = manifest["preprocessing"]["size"]
    return [None, int(height), int(width), 3]


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
    _validate_exports(manifest.get("exports", []), source)
    return manifest


def _validate_exports(rows: object, source: str) -> None:
    """Export rows: a list of objects, each naming a file under exports/ and its sha256."""
    if not isinstance(rows, list):
        raise BundleError(f"{source}: manifest exports must be a list; received {type(rows).__name__}")
    for row in rows:
        if not isinstance(row, dict):
            raise BundleError(f"{source}: an export row is not an object: {str(row)[:60]!r}")
        path = row.get("path")
        parts = PurePosixPath(path).parts if isinstance(path, str) else ()
        if len(parts) < 2 or parts[0] != EXPORTS_DIR or ".." in parts or path.startswith("/"):
            raise BundleError(f"{source}: export path {path!r} is not a file under {EXPORTS_DIR}/; "
                              "re-run `graft export`")
        if not isinstance(row.get("sha256"), str) or not isinstance(row.get("format"), str):
            raise BundleError(f"{source}: export {path!r} has no sha256 or format; re-run `graft export`")


def parse_manifest(text: str | bytes, source: str) -> dict:
    """Parse and validate a manifest's JSON text."""
    try:
        manifest = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{source}: the manifest is not valid JSON ({exc})") from None
    return validate_manifest(manifest, source)


def is_bundle(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds a graft.json (one that cannot even be looked at counts: reading it
    then says why)."""
    try:
        return Path(path, MANIFEST_NAME).is_file()
    except PermissionError:
        return Path(path).is_dir()


def read_manifest(bundle: str | os.PathLike) -> dict:
    """The bundle's graft.json, validated; BundleError when it is missing, unreadable or malformed."""
    path = Path(bundle, MANIFEST_NAME)
    try:
        if not path.is_file():
            raise BundleError(f"{bundle}: not a graft bundle (no {MANIFEST_NAME}); "
                              "create one with `graft build DATA -o BUNDLE`")
        data = path.read_bytes()
    except PermissionError:  # the caller's to fix (a volume mounted for another user): bad input
        raise BundleError(f"{path}: cannot be read (permission denied); make the bundle readable by "
                          f"the user graft runs as (uid {os.getuid()})") from None
    return parse_manifest(data, str(path))


def write_manifest(bundle: str | os.PathLike, manifest: dict) -> None:
    """Validate and write graft.json atomically (callers that read first hold ``updating``)."""
    validate_manifest(manifest, str(bundle))
    text = json.dumps(manifest, indent=2, sort_keys=False) + "\n"
    atomic_write_bytes(Path(bundle, MANIFEST_NAME), text.encode())


@contextmanager
def updating(bundle: str | os.PathLike) -> Iterator[dict]:
    """Read graft.json under the bundle's lock, let the caller change it, write it back.

        with updating(bundle) as manifest:
            manifest["exports"].append(row)
    """
    with locked(bundle):
        manifest = read_manifest(bundle)
        yield manifest
        write_manifest(bundle, manifest)


def portable_manifest(manifest: dict) -> dict:
    """The part of the manifest that is embedded in every exported file."""
    return {key: manifest[key] for key in PORTABLE_KEYS if key in manifest}


def put_export(manifest: dict, entry: dict) -> None:
    """Add or replace (by relative path) an exported artifact's row in ``manifest``, in path order."""
    rows = [row for row in manifest.get("exports", []) if row.get("path") != entry["path"]]
    manifest["exports"] = sorted(rows + [entry], key=lambda row: row["path"])


def record_export(bundle: str | os.PathLike, entry: dict) -> dict:
    """Add or replace (by relative path) an exported artifact's row in graft.json."""
    with updating(bundle) as manifest:
        put_export(manifest, entry)
    return manifest


def build_id(manifest: dict) -> tuple:
    """What tells one build of a bundle from another (a rebuild replaces the model)."""
    return (manifest.get("created"), manifest.get("dataset", {}).get("fingerprint"),
            manifest.get("backbone", {}).get("weights", {}).get("sha256"))


def find_export(manifest: dict, fmt: str, precision: str = "float32") -> dict | None:
    """The export row of ``fmt``:``precision``, or None."""
    for row in manifest.get("exports", []):
        if row.get("format") == fmt and row.get("precision") == precision:
            return row
    return None
