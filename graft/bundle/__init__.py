"""The bundle: a directory with model.keras, graft.json, splits.json and exports/.

``graft.json`` (the manifest) is the single record of a model; ``splits.json``
records where every training image went. Both change atomically, and
read-modify-write cycles of graft.json take the bundle's lock. This package
imports only the standard library.
"""

from graft.bundle.choice import PREFERENCE, Choice, choose_export, parse_artifact
from graft.bundle.files import (atomic_path, atomic_write_bytes, fsync_dir, locked,
                                recover_directory, sha256_file, staging_directory, swap_directory)
from graft.bundle.manifest import (EXPORTS_DIR, build_id, INTERPOLATIONS, KERAS_NAME, MANIFEST_NAME,
                                   METADATA_KEY, PORTABLE_KEYS, RESIZE_MODES, SCHEMA_VERSION,
                                   find_export, input_shape, input_spec, is_bundle, parse_manifest,
                                   portable_manifest, preprocessing_contract, read_manifest,
                                   put_export, record_export, updating, validate_manifest, write_manifest)
from graft.bundle.splits import (SPLITS, SPLITS_NAME, held_out_rows, read_splits, sample_file,
                                 split_rows, write_splits)

__all__ = [
    "PREFERENCE", "Choice", "choose_export", "parse_artifact",
    "atomic_path", "atomic_write_bytes", "fsync_dir", "locked", "recover_directory", "sha256_file",
    "staging_directory", "swap_directory", "EXPORTS_DIR", "INTERPOLATIONS", "KERAS_NAME", "MANIFEST_NAME", "METADATA_KEY",
    "PORTABLE_KEYS", "RESIZE_MODES", "build_id", "SCHEMA_VERSION", "find_export", "input_shape", "input_spec",
    "is_bundle", "parse_manifest", "portable_manifest", "preprocessing_contract", "read_manifest",
    "put_export", "record_export", "updating", "validate_manifest", "write_manifest", "SPLITS", "SPLITS_NAME",
    "held_out_rows", "read_splits", "sample_file", "split_rows", "write_splits",
]
