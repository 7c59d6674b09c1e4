"""Inputs and result files for batch inference (`graft predict`).

Inputs: files, directories (recursive), globs, or .txt/.csv files listing
paths; expanded once, in a stable order, with duplicates dropped (a path is the
key of its row).

Outputs: CSV, JSONL or Parquet, chosen by the suffix, written in complete
chunks that are flushed and fsynced before the next one starts, so a crash or
``kill -9`` loses at most the chunk in flight and never damages what was
already written:

- CSV and JSONL are appended to in place. On resume the file is read back,
  a torn final record (the part after the last complete line) is cut off,
  and the paths already present are skipped.
- Parquet cannot be appended to, so ``OUT.parquet`` is a directory of part
  files (``part-000000.parquet``, ...), each written to a temporary name and
  renamed into place. It reads as one table with pyarrow, pandas, Spark or
  Ray. On resume, leftover temporary files are removed and the parts' paths
  are skipped.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from graft.errors import GraftError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
LIST_SUFFIXES = {".txt", ".csv"}
OUTPUT_SUFFIXES = (".csv", ".jsonl", ".parquet")
COLUMNS = ["path", "labels", "scores", "error"]
_ENCODING = {"encoding": "utf-8", "errors": "surrogateescape"}  # any file name round-trips
csv.field_size_limit(1 << 24)  # long error messages and paths


class OutputError(GraftError):
    """An output file that exists, has an unknown format, or is not a graft result file."""


@dataclass(frozen=True)
class Result:
    """One row of a batch job: top-k labels and scores, or an error."""

    path: str
    labels: tuple[str, ...] = ()
    scores: tuple[float, ...] = ()
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error

    def as_dict(self) -> dict:
        return {"path": self.path, "labels": list(self.labels), "scores": list(self.scores),
                "error": self.error}


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


def _lines(text: str) -> list[str]:
    """Records split on newlines only: str.splitlines() would also split inside a path
    holding U+2028, U+0085 and the like, which JSON writes unescaped."""
    return [line for line in text.split("\n") if line]


def _read_list(path: Path) -> Iterator[str]:
    """A .txt (one path per line, taken as it is) or .csv (path in the first column, optional header)."""
    with open(path, newline="", **_ENCODING) as fh:
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


# ---------------------------------------------------------------------- outputs
@dataclass
class Done:
    """What an earlier run already wrote: path -> True if that row is an error."""

    rows: dict[str, bool] = field(default_factory=dict)

    def __contains__(self, path: str) -> bool:
        return path in self.rows

    def __len__(self) -> int:
        return len(self.rows)


def output_format(output: str | os.PathLike) -> str:
    suffix = Path(output).suffix.lower()
    if suffix not in OUTPUT_SUFFIXES:
        raise OutputError(f"{output}: unknown output format {suffix or '(no suffix)'!r}; "
                          f"allowed: {', '.join(OUTPUT_SUFFIXES)}")
    return suffix[1:]


def open_output(output: str | os.PathLike, resume: bool = False,
                overwrite: bool = False) -> tuple["ResultWriter", Done]:
    """Open ``output`` for appending; with ``resume``, repair it and return what is done."""
    fmt = output_format(output)
    path = Path(output)
    exists = path.exists() or path.is_symlink()
    if exists and not (resume or overwrite):
        raise OutputError(f"{output}: already exists; pass --resume to finish that job "
                          "or --overwrite to replace it")
    writer_class = ParquetWriter if fmt == "parquet" else TextWriter
    return writer_class.open(path, fmt, clear=overwrite and not resume)  # cleared once locked


class ResultWriter:
    """Appends complete, durable chunks of results."""

    def write(self, results: list[Result]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> "ResultWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _lock(fd: int, path: Path) -> None:
    try:
        import fcntl
    except ImportError:  # not on POSIX: no lock, the rest works
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise OutputError(f"{path}: another graft predict is writing this output; "
                          "wait for it or choose another output") from None


# CSV and JSONL ----------------------------------------------------------------
class TextWriter(ResultWriter):
    def __init__(self, path: Path, fmt: str, fd: int):
        self.path, self.fmt, self.fd = path, fmt, fd

    @classmethod
    def open(cls, path: Path, fmt: str, clear: bool = False) -> tuple["TextWriter", Done]:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() and not path.is_file():
            raise OutputError(f"{path}: not a regular file; choose another output")
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        _lock(fd, path)
        try:
            if clear:
                os.ftruncate(fd, 0)
            writer = cls(path, fmt, fd)
            done = writer._recover()
        except BaseException:
            os.close(fd)
            raise
        return writer, done

    def _recover(self) -> Done:
        """Read back complete records, cut a torn tail, write the CSV header if missing."""
        data = _read_all(self.fd)
        end = _complete_end(data, quoted=self.fmt == "csv")
        done = Done()
        rows = _parse_csv(data[:end], self.path) if self.fmt == "csv" else _parse_jsonl(data[:end], self.path)
        if self.fmt == "csv" and rows is None:
            end = 0  # no complete header: start the file again
        for path, failed in rows or ():
            done.rows[path] = failed
        if end != len(data):
            os.ftruncate(self.fd, end)
        os.lseek(self.fd, end, os.SEEK_SET)
        if end == 0 and self.fmt == "csv":
            self._append(_csv_text([COLUMNS]))
        elif end != len(data):
            os.fsync(self.fd)
        return done

    def write(self, results: list[Result]) -> None:
        if self.fmt == "csv":
            text = _csv_text([r.path, "|".join(r.labels), "|".join(f"{s:.6f}" for s in r.scores),
                              r.error] for r in results)
        else:
            text = "".join(json.dumps(r.as_dict(), ensure_ascii=False) + "\n" for r in results)
        self._append(text)

    def _append(self, text: str) -> None:
        data = memoryview(text.encode(**_ENCODING))
        while data:
            data = data[os.write(self.fd, data):]
        os.fsync(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _read_all(fd: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    parts = []
    while block := os.read(fd, 1 << 24):
        parts.append(block)
    return b"".join(parts)


def _complete_end(data: bytes, quoted: bool) -> int:
    """Offset just past the last complete record (a newline outside CSV quotes)."""
    nul = data.find(b"\0")  # a crash can leave zero-filled blocks at the end
    pos = len(data) if nul < 0 else nul
    while (newline := data.rfind(b"\n", 0, pos)) >= 0:
        if not quoted or data.count(b'"', 0, newline) % 2 == 0:
            return newline + 1
        pos = newline
    return 0


def _csv_text(rows: Iterable[list]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


def _parse_csv(data: bytes, path: Path) -> list[tuple[str, bool]] | None:
    reader = csv.reader(io.StringIO(data.decode(**_ENCODING), newline=""))
    header = next(reader, None)
    if header is None:
        return None
    if header != COLUMNS:
        raise OutputError(f"{path}: not a graft predict result file (header {header[:4]!r}, "
                          f"expected {COLUMNS!r}); choose another output")
    rows = []
    for number, row in enumerate(reader, start=2):
        if len(row) != len(COLUMNS):
            raise OutputError(f"{path}: record {number} has {len(row)} fields, expected "
                              f"{len(COLUMNS)}; the file was changed, choose another output")
        rows.append((row[0], bool(row[3])))
    return rows


def _parse_jsonl(data: bytes, path: Path) -> list[tuple[str, bool]]:
    rows = []
    for number, line in enumerate(_lines(data.decode(**_ENCODING)), start=1):
        try:
            record = json.loads(line)
            rows.append((record["path"], bool(record["error"])))
        except (json.JSONDecodeError, TypeError, KeyError):
            raise OutputError(f"{path}: line {number} is not a graft predict record; the file "
                              "was changed, choose another output") from None
    return rows


# Parquet ----------------------------------------------------------------------
class ParquetWriter(ResultWriter):
    def __init__(self, directory: Path, fd: int, next_part: int):
        self.directory, self.fd, self.next_part = directory, fd, next_part

    @classmethod
    def open(cls, directory: Path, fmt: str, clear: bool = False) -> tuple["ParquetWriter", Done]:
        pq = _pyarrow_parquet()
        if directory.exists() and not directory.is_dir():
            raise OutputError(f"{directory}: Parquet output is a directory of part files, "
                              "but this is a file; choose another output")
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(directory, os.O_RDONLY)
        _lock(fd, directory)
        if clear:
            _clear_parts(directory, fd)
        done, next_part = Done(), 0
        for leftover in directory.glob(".*.tmp"):
            leftover.unlink()
        for part in sorted(directory.glob("part-*.parquet")):
            try:
                table = pq.read_table(part, columns=["path", "error"])
            except Exception as exc:  # pyarrow raises several untyped errors
                os.close(fd)
                raise OutputError(f"{part}: not a readable Parquet part ({exc}); "
                                  "choose another output") from None
            for path, error in zip(table.column("path").to_pylist(), table.column("error").to_pylist()):
                done.rows[path] = bool(error)
            next_part = max(next_part, int(part.stem.split("-")[1]) + 1)
        return cls(directory, fd, next_part), done

    def write(self, results: list[Result]) -> None:
        import pyarrow as pa

        pq = _pyarrow_parquet()
        table = pa.table({
            "path": pa.array([r.path for r in results], pa.string()),
            "labels": pa.array([list(r.labels) for r in results], pa.list_(pa.string())),
            "scores": pa.array([list(r.scores) for r in results], pa.list_(pa.float32())),
            "error": pa.array([r.error for r in results], pa.string()),
        })
        name = f"part-{self.next_part:06d}.parquet"
        tmp = self.directory / f".{name}.tmp"
        pq.write_table(table, tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, self.directory / name)
        os.fsync(self.fd)  # make the rename durable
        self.next_part += 1

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _clear_parts(directory: Path, fd: int) -> None:
    """Delete the parts (and temporary parts) of an output that is to be overwritten."""
    others = [p.name for p in directory.iterdir() if p.suffix not in (".parquet", ".tmp")]
    if others:
        os.close(fd)
        raise OutputError(f"{directory}: holds more than Parquet parts ({others[0]}, ...); "
                          "refusing to overwrite it, choose another output")
    for part in directory.iterdir():
        part.unlink()


def _pyarrow_parquet():
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise OutputError("Parquet output needs pyarrow; install graft[parquet] "
                          "or write .csv / .jsonl") from None
    return pq


def read_results(output: str | os.PathLike) -> list[Result]:
    """Read a result file (any of the three formats) back; a torn last record is left out."""
    fmt = output_format(output)
    if fmt == "parquet":
        pq = _pyarrow_parquet()
        rows = [row for part in sorted(Path(output).glob("part-*.parquet"))
                for row in pq.read_table(part).to_pylist()]
    else:
        data = Path(output).read_bytes()
        text = data[:_complete_end(data, quoted=fmt == "csv")].decode(**_ENCODING)
        if fmt == "jsonl":
            rows = [json.loads(line) for line in _lines(text)]
        else:
            rows = [{"path": r["path"], "labels": [x for x in r["labels"].split("|") if x],
                     "scores": [float(x) for x in r["scores"].split("|") if x], "error": r["error"]}
                    for r in csv.DictReader(io.StringIO(text, newline=""))]
    return [Result(r["path"], tuple(r["labels"] or ()), tuple(r["scores"] or ()), r["error"] or "")
            for r in rows]
