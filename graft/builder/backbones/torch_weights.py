"""A restricted reader for legacy (non-zip) PyTorch ``state_dict`` files, without PyTorch.

The legacy format is a sequence of pickles followed by raw bytes:

1. the magic number, 2. the format version (1001), 3. system information
(endianness), 4. the state dict, whose storages are persistent ids, 5. the list
of storage keys, then for each key in that order an 8-byte little-endian element
count and the storage's raw bytes.

Every pickle is read by an unpickler that resolves exactly four globals
(``collections.OrderedDict``, ``torch._utils._rebuild_tensor_v2``,
``torch.FloatStorage``, ``torch.LongStorage``) to inert stand-ins defined here;
anything else is refused before it can run. Tensors are rebuilt as numpy arrays
only after every offset, shape and stride has been checked against the bytes
that are really there.
"""

from __future__ import annotations

import io
import math
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from graft.errors import WeightsError

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001
_ZIP_MAGIC = b"PK\x03\x04"


@dataclass(frozen=True, slots=True)
class _StorageType:
    """What ``torch.FloatStorage`` / ``torch.LongStorage`` resolve to: a name and a dtype."""

    name: str
    dtype: np.dtype


_STORAGE_TYPES = {
    "FloatStorage": _StorageType("FloatStorage", np.dtype("<f4")),
    "LongStorage": _StorageType("LongStorage", np.dtype("<i8")),
}


@dataclass(frozen=True, slots=True)
class _Storage:
    key: str
    kind: _StorageType
    numel: int


@dataclass(frozen=True, slots=True)
class _TensorRef:
    """A tensor as the pickle describes it; its bytes arrive after the pickle ends."""

    storage: _Storage
    offset: int
    shape: tuple
    stride: tuple


class _OrderedDict(dict):
    """Stand-in for ``collections.OrderedDict``; BUILD state (torch's ``_metadata``) is dropped."""

    def __setstate__(self, state) -> None:
        pass


def _rebuild_tensor(storage, offset, shape, stride, requires_grad=False, hooks=None, *extra):
    """Stand-in for ``torch._utils._rebuild_tensor_v2``: record, check types, build nothing."""
    if not isinstance(storage, _Storage):
        raise WeightsError(f"a tensor refers to {type(storage).__name__}, not a storage")
    if not _is_int(offset) or not _int_tuple(shape) or not _int_tuple(stride) \
            or len(shape) != len(stride):
        raise WeightsError(f"a tensor has a malformed offset/shape/stride: {offset!r}, "
                           f"{shape!r}, {stride!r}")
    if hooks:
        raise WeightsError("a tensor carries backward hooks; only plain tensors are accepted")
    return _TensorRef(storage, offset, tuple(shape), tuple(stride))


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_tuple(value) -> bool:
    return isinstance(value, tuple) and all(_is_int(v) for v in value)


_ALLOWED = {
    ("collections", "OrderedDict"): _OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    **{("torch", name): kind for name, kind in _STORAGE_TYPES.items()},
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the globals in ``_ALLOWED`` and storage persistent ids."""

    def __init__(self, stream, source: str):
        super().__init__(stream)
        self.source = source
        self.storages: dict[str, _Storage] = {}

    def find_class(self, module, name):
        allowed = _ALLOWED.get((module, name))
        if allowed is None:
            raise WeightsError(f"{self.source}: the file asks for {module}.{name}; only plain "
                               "tensors (float32, int64) in an OrderedDict are accepted")
        return allowed

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
            raise WeightsError(f"{self.source}: unsupported persistent id {str(pid)[:80]}")
        _, kind, key, _location, numel, view = pid
        if not isinstance(kind, _StorageType) or not isinstance(key, str) or not _is_int(numel) \
                or numel < 0 or view is not None:
            raise WeightsError(f"{self.source}: malformed storage reference {str(pid)[:80]}")
        storage = self.storages.setdefault(key, _Storage(key, kind, numel))
        if storage != _Storage(key, kind, numel):
            raise WeightsError(f"{self.source}: storage {key} is declared twice differently")
        return storage


def load_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Read a legacy PyTorch ``state_dict`` file into numpy arrays, without PyTorch.

    Args:
        path: a file written by ``torch.save(state_dict, path,
            _use_new_zipfile_serialization=False)`` (or by PyTorch before 1.6).

    Returns:
        The tensors in file order, as C-contiguous float32 or int64 arrays.

    Raises:
        WeightsError: the file is missing, truncated, in another format, asks for
            anything but plain tensors, or has a tensor outside its storage.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise WeightsError(f"{path}: cannot read the weights file ({exc.strerror})") from None
    if data.startswith(_ZIP_MAGIC):
        raise WeightsError(f"{path}: a zip-format PyTorch file; only the legacy format is read "
                           "here (re-save it with _use_new_zipfile_serialization=False)")
    stream = io.BytesIO(data)
    unpickler = _RestrictedUnpickler(stream, str(path))
    _check_header(unpickler, path)
    state = _load(unpickler, path, "state dict")
    keys = _load(unpickler, path, "storage key list")
    refs = _check_state(state, keys, unpickler.storages, path)
    arrays = _read_storages(data, stream.tell(), keys, unpickler.storages, path)
    return {name: _materialise(ref, arrays[ref.storage.key], name, path)
            for name, ref in refs.items()}


def _load(unpickler: _RestrictedUnpickler, path: Path, what: str):
    try:
        return unpickler.load()
    except WeightsError:
        raise
    except EOFError:
        raise WeightsError(f"{path}: the file ends before its {what}; it is truncated") from None
    except Exception as exc:  # any malformed pickle: opcode, memo, type errors
        raise WeightsError(f"{path}: cannot read the {what} ({type(exc).__name__}: "
                           f"{str(exc)[:120]}); not a legacy PyTorch state dict") from None


def _check_header(unpickler: _RestrictedUnpickler, path: Path) -> None:
    magic = _load(unpickler, path, "magic number")
    if magic != MAGIC_NUMBER:
        raise WeightsError(f"{path}: not a legacy PyTorch file (no magic number)")
    version = _load(unpickler, path, "format version")
    if version != PROTOCOL_VERSION:
        raise WeightsError(f"{path}: legacy format version {version!r}; only "
                           f"{PROTOCOL_VERSION} is read")
    info = _load(unpickler, path, "system information")
    if not isinstance(info, dict) or info.get("little_endian") is not True:
        raise WeightsError(f"{path}: only little-endian files are read")


def _check_state(state, keys, storages: dict, path: Path) -> dict[str, _TensorRef]:
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: holds a {type(state).__name__}, not a state dict")
    for name, value in state.items():
        if not isinstance(name, str) or not isinstance(value, _TensorRef):
            raise WeightsError(f"{path}: entry {name!r} is a {type(value).__name__}; a state "
                               "dict maps names to tensors")
    if not (isinstance(keys, list) and all(isinstance(k, str) for k in keys)
            and len(set(keys)) == len(keys) and set(keys) == set(storages)):
        raise WeightsError(f"{path}: the storage key list does not match the storages "
                           "the tensors use")
    return dict(state)


def _read_storages(data: bytes, position: int, keys: list[str], storages: dict,
                   path: Path) -> dict[str, np.ndarray]:
    arrays = {}
    for key in keys:
        storage = storages[key]
        if position + 8 > len(data):
            raise WeightsError(f"{path}: the file ends before storage {key}; it is truncated")
        (count,) = struct.unpack_from("<q", data, position)
        if count != storage.numel:
            raise WeightsError(f"{path}: storage {key} holds {count} elements; its tensors "
                               f"declared {storage.numel}")
        position += 8
        size = count * storage.kind.dtype.itemsize
        if position + size > len(data):
            raise WeightsError(f"{path}: the file ends inside storage {key} (needs {size} "
                               f"bytes, has {len(data) - position}); it is truncated")
        arrays[key] = np.frombuffer(data, storage.kind.dtype, count, position)
        position += size
    if position != len(data):
        raise WeightsError(f"{path}: {len(data) - position} unexpected bytes after the last "
                           "storage")
    return arrays


def _materialise(ref: _TensorRef, storage: np.ndarray, name: str, path: Path) -> np.ndarray:
    if ref.offset < 0 or any(n < 0 for n in ref.shape) or any(s < 0 for s in ref.stride):
        raise WeightsError(f"{path}: tensor {name!r} has a negative offset, size or stride")
    if 0 in ref.shape:
        last = ref.offset - 1  # empty: only the offset itself must be in range
    else:
        last = ref.offset + sum((n - 1) * s for n, s in zip(ref.shape, ref.stride))
    if last >= storage.size or ref.offset > storage.size or math.prod(ref.shape) > storage.size:
        raise WeightsError(f"{path}: tensor {name!r} (offset {ref.offset}, shape {ref.shape}, "
                           f"stride {ref.stride}) does not fit in its storage of "
                           f"{storage.size} elements; the file is corrupt")
    itemsize = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(storage[ref.offset:], ref.shape,
                                           [s * itemsize for s in ref.stride], writeable=False)
    return np.array(view, dtype=storage.dtype.newbyteorder("="), order="C")  # a copy; keeps 0-d
