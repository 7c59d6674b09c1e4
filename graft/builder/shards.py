"""Feature shards: many vectors per file, written once, read back row by row.

A shard is two files in one directory: ``<id>.npy``, a plain NumPy float32
array (n, D), and ``<id>.keys.npy``, the n cache keys (64 hex characters each),
written in that order, each atomically. A shard whose keys file exists is
complete; one whose features file is missing or short is ignored (its rows are
computed again). Rows are read with ``os.pread`` at their offset, so a reader
holds only the rows it was asked for, however many shards there are.

``Rows`` is what training reads: ``len(rows)``, ``rows.dim`` and
``rows.take(positions)``; ``ArrayRows`` wraps an in-memory array, ``ShardRows``
reads from shards. Both give the same values for the same rows.
"""

from __future__ import annotations

import os
import secrets
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import numpy as np

from graft.bundle import atomic_path

KEY_DTYPE = "S64"           # a cache key: sha256 as 64 hex characters
SHARD_BYTES = 16 << 20      # features per shard file: about 16 MiB (3,276 rows of 1280 floats)
OPEN_FILES = 128            # shard files a reader keeps open at once


def rows_per_shard(dim: int, shard_bytes: int | None = None) -> int:
    """How many rows of ``dim`` float32 values fill one shard (at least 64)."""
    return max(64, (shard_bytes or SHARD_BYTES) // (4 * max(1, dim)))


def _header(path: Path) -> tuple[int, tuple, np.dtype, bool]:
    """(data offset, shape, dtype, fortran order) of a .npy file."""
    with open(path, "rb") as fh:
        version = np.lib.format.read_magic(fh)
        fmt = np.lib.format
        read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        shape, fortran, dtype = read(fh)
        return fh.tell(), shape, dtype, fortran


class ShardStore:
    """The shards of one feature namespace (one backbone, preprocessing and extractor)."""

    def __init__(self, directory: str | os.PathLike):
        self.dir = Path(directory)

    def write(self, keys: Sequence[str], vectors: np.ndarray) -> str:
        """Write one shard (features first, then keys); return its id."""
        vectors = np.ascontiguousarray(vectors, dtype="<f4")
        if vectors.ndim != 2 or len(vectors) != len(keys):
            raise ValueError(f"a shard needs (n, D) vectors for n keys; received {vectors.shape} "
                             f"for {len(keys)} keys")
        self.dir.mkdir(parents=True, exist_ok=True)
        name = f"shard-{secrets.token_hex(8)}"
        for suffix, array in ((".npy", vectors), (".keys.npy", np.asarray(keys, dtype=KEY_DTYPE))):
            with atomic_path(self.dir / f"{name}{suffix}", suffix=".npy") as tmp, open(tmp, "wb") as fh:
                np.save(fh, array)
        return name

    def index(self) -> "Index":
        """Every complete shard's keys, sorted for lookup (the vectors stay on disk)."""
        names, keys, shard, row = [], [], [], []
        dim = None
        for keys_file in sorted(self.dir.glob("shard-*.keys.npy")) if self.dir.is_dir() else []:
            name = keys_file.name[: -len(".keys.npy")]
            try:
                found = np.load(keys_file)
                offset, shape, dtype, fortran = _header(self.dir / f"{name}.npy")
                size = (self.dir / f"{name}.npy").stat().st_size
            except (OSError, ValueError):
                continue  # damaged or half-deleted: its rows are computed again
            complete = (len(shape) == 2 and shape[0] == len(found) and dtype == np.dtype("<f4")
                        and not fortran and size >= offset + shape[0] * shape[1] * 4)
            if not complete or (dim is not None and shape[1] != dim):
                continue
            dim = shape[1]
            keys.append(found.astype(KEY_DTYPE))
            shard.append(np.full(len(found), len(names), np.int32))
            row.append(np.arange(len(found), dtype=np.int64))
            names.append(name)
        return Index(self.dir, names, keys, shard, row, dim)


class Index:
    """Where each key's vector is: shard and row, found by binary search over sorted keys."""

    def __init__(self, directory: Path, names: list[str], keys: list, shard: list, row: list,
                 dim: int | None):
        self.dir, self.names, self.dim = directory, names, dim
        all_keys = np.concatenate(keys) if keys else np.zeros(0, KEY_DTYPE)
        order = np.argsort(all_keys, kind="stable")
        self.keys = all_keys[order]
        self.shard = (np.concatenate(shard) if shard else np.zeros(0, np.int32))[order]
        self.row = (np.concatenate(row) if row else np.zeros(0, np.int64))[order]

    def __len__(self) -> int:
        return len(self.keys)

    def find(self, keys: Sequence[str]) -> np.ndarray:
        """Positions in the index of ``keys`` (-1 where a key is absent)."""
        query = np.asarray(keys, dtype=KEY_DTYPE)
        if not len(self.keys) or not len(query):
            return np.full(len(query), -1, np.int64)
        at = np.minimum(np.searchsorted(self.keys, query), len(self.keys) - 1)
        return np.where(self.keys[at] == query, at, -1)

    def rows(self, keys: Sequence[str]) -> "ShardRows":
        """The vectors of ``keys``, in that order; KeyError names the first missing one."""
        at = self.find(keys)
        if (at < 0).any():
            raise KeyError(f"feature cache: no vector for key {keys[int(np.argmax(at < 0))]}")
        return ShardRows(self.dir, self.names, self.shard[at], self.row[at], self.dim or 0)


class ArrayRows:
    """Rows of an in-memory (N, D) float32 array."""

    def __init__(self, array: np.ndarray):
        self.array = np.asarray(array, dtype=np.float32)
        self.dim = int(self.array.shape[1]) if self.array.ndim == 2 else 0

    def __len__(self) -> int:
        return len(self.array)

    def take(self, positions: np.ndarray) -> np.ndarray:
        return self.array[np.asarray(positions, dtype=np.int64)]

    def subset(self, positions: np.ndarray) -> "ArrayRows":
        return ArrayRows(self.take(positions))


class ShardRows:
    """Rows that live in shard files; ``take`` reads only the rows asked for."""

    def __init__(self, directory: Path, names: list[str], shard: np.ndarray, row: np.ndarray, dim: int):
        self.dir, self.names, self.dim = Path(directory), names, int(dim)
        self.shard, self.row = np.asarray(shard, np.int32), np.asarray(row, np.int64)
        self._files: OrderedDict[int, tuple[int, int]] = OrderedDict()  # shard -> (fd, data offset)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.row)

    @property
    def shards(self) -> int:
        """How many shard files hold these rows."""
        return int(len(np.unique(self.shard)))

    def subset(self, positions: np.ndarray) -> "ShardRows":
        positions = np.asarray(positions, dtype=np.int64)
        return ShardRows(self.dir, self.names, self.shard[positions], self.row[positions], self.dim)

    def take(self, positions: np.ndarray) -> np.ndarray:
        positions = np.asarray(positions, dtype=np.int64)
        out = np.empty((len(positions), self.dim), np.float32)
        width = self.dim * 4
        with self._lock:
            for i, p in enumerate(positions):
                fd, offset = self._open(int(self.shard[p]))
                data = os.pread(fd, width, offset + int(self.row[p]) * width)
                if len(data) != width:
                    raise OSError(f"{self.dir}: shard {self.names[self.shard[p]]} is shorter than "
                                  "its keys say; delete it and build again")
                out[i] = np.frombuffer(data, dtype="<f4")
        return out

    def _open(self, shard: int) -> tuple[int, int]:
        if shard in self._files:
            self._files.move_to_end(shard)
            return self._files[shard]
        path = self.dir / f"{self.names[shard]}.npy"
        offset = _header(path)[0]
        self._files[shard] = (os.open(path, os.O_RDONLY), offset)
        if len(self._files) > OPEN_FILES:
            os.close(self._files.popitem(last=False)[1][0])
        return self._files[shard]

    def close(self) -> None:
        with self._lock:
            while self._files:
                os.close(self._files.popitem()[1][0])

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass

    def __getstate__(self):  # open files do not travel
        return {k: v for k, v in self.__dict__.items() if k not in ("_files", "_lock")}

    def __setstate__(self, state):
        self.__dict__.update(state, _files=OrderedDict(), _lock=threading.Lock())


class ShardWriter:
    """Collects vectors and writes a shard whenever ``rows`` of them are waiting."""

    def __init__(self, store: ShardStore, dim: int, rows: int | None = None):
        self.store, self.dim = store, dim
        self.rows = rows or rows_per_shard(dim)
        self._keys: list[str] = []
        self._vectors: list[np.ndarray] = []
        self._waiting = 0
        self.written: list[str] = []

    def add(self, keys: Sequence[str], vectors: np.ndarray) -> None:
        if len(keys):
            self._keys.extend(keys)
            self._vectors.append(np.asarray(vectors, dtype=np.float32))
            self._waiting += len(keys)
        while self._waiting >= self.rows:
            self._flush(self.rows)

    def close(self) -> None:
        """Write what is waiting (a last, shorter shard)."""
        if self._waiting:
            self._flush(self._waiting)

    def _flush(self, count: int) -> None:
        vectors = np.concatenate(self._vectors)
        self.written.append(self.store.write(self._keys[:count], vectors[:count]))
        self._keys = self._keys[count:]
        self._vectors = [vectors[count:]] if count < len(vectors) else []
        self._waiting -= count
