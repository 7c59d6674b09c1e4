"""Result writers: CSV and JSONL appended in place, Parquet as a directory of parts.

Rows are written in complete chunks that are flushed and fsynced before the next
one starts, so a crash or ``kill -9`` loses at most the chunk in flight and never
damages what was already written:

- CSV and JSONL are appended to in place. On resume the file is read back, a
  torn final record (the part after the last complete line) is cut off, and the
  paths already present are skipped.
- Parquet cannot be appended to, so ``OUT.parquet`` is a directory of part files
  (``part-000000.parquet``, ...), each written to a temporary name and renamed
  into place. It reads as one table with pyarrow, pandas, Spark or Ray. On
  resume, leftover temporary files are removed and the parts' paths are skipped.

A writer is opened only after ``outputs.open_output`` has checked that the
output belongs to this job; it locks the output so two jobs never share it.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from graft.errors import GraftError
from graft.runtime.inputs import ENCODING
from graft.runtime.pipeline import COLUMNS, Result, arrow_table

csv.field_size_limit(1 << 24)  # long error messages and paths


class OutputError(GraftError):
    """An output file that exists, has an unknown format, or is not this job's result file."""


@dataclass
class Done:
    """What an earlier run already wrote: path -> True if that row is an error."""

    rows: dict[str, bool] = field(default_factory=dict)

    def __contains__(self, path: str) -> bool:
        return path in self.rows

    def __len__(self) -> int:
        return len(self.rows)


def lines(text: str) -> list[str]:
    """Records split on newlines only: str.splitlines() would also split inside a path
    holding U+2028, U+0085 and the like, which JSON writes unescaped."""
    return [line for line in text.split("\n") if line]


class ResultWriter:
    """Appends complete, durable chunks of results; holds the output's locked descriptor."""

    fd = -1

    def write(self, results: list[Result]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "ResultWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# The job record: which model, top-k and columns wrote an output --------------------
def record_path(output: Path, fmt: str) -> Path:
    """Where an output's job record lives: beside a CSV/JSONL file, inside a Parquet directory
    (a leading '_' keeps Parquet readers from taking it for a part)."""
    return output / "_graft_job.json" if fmt == "parquet" else output.with_name(output.name + ".graft.json")


def check_record(output: Path, fmt: str, job: dict, has_rows: bool) -> None:
    """Refuse to add to an output another job wrote (or one with rows and no record).

    Runs under the output's lock and before anything is repaired or cut, so a
    refused output is left exactly as it was. A new output gets ``job`` as its record.
    """
    path = record_path(output, fmt)
    if not path.is_file():
        if has_rows:
            raise OutputError(f"{output}: holds rows but no job record ({path.name}), so graft cannot "
                              "tell which model wrote them; pass --overwrite to replace it or choose "
                              "another output")
        write_record(output, fmt, job)
        return
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise OutputError(f"{path}: the job record is damaged; pass --overwrite to start again "
                          "or choose another output") from None
    differs = [key for key in ("model_sha256", "top_k", "columns") if recorded.get(key) != job.get(key)]
    if differs:
        said = ", ".join(f"{key} {recorded.get(key)!r} (now {job.get(key)!r})" for key in differs)
        raise OutputError(f"{output}: written by another job: {said}; --resume needs the same model, "
                          "--top-k and columns; pass --overwrite or choose another output")


def write_record(output: Path, fmt: str, job: dict) -> None:
    from graft.bundle import atomic_write_bytes

    atomic_write_bytes(record_path(output, fmt), (json.dumps(job, indent=1) + "\n").encode())


def lock(fd: int, path: Path) -> None:
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
    def open(cls, path: Path, fmt: str, job: dict, clear: bool = False) -> tuple["TextWriter", Done]:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() and not path.is_file():
            raise OutputError(f"{path}: not a regular file; choose another output")
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        lock(fd, path)
        try:
            if clear:
                os.ftruncate(fd, 0)
                write_record(path, fmt, job)
            else:
                check_record(path, fmt, job, has_rows=os.fstat(fd).st_size > 0)
            writer = cls(path, fmt, fd)
            done = writer._recover()
        except BaseException:
            os.close(fd)
            raise
        return writer, done

    def _recover(self) -> Done:
        """Read back complete records, cut a torn tail, write the CSV header if missing."""
        data = _read_all(self.fd)
        end = complete_end(data, quoted=self.fmt == "csv")
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
        data = memoryview(text.encode(**ENCODING))
        while data:
            data = data[os.write(self.fd, data):]
        os.fsync(self.fd)


def _read_all(fd: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    parts = []
    while block := os.read(fd, 1 << 24):
        parts.append(block)
    return b"".join(parts)


def complete_end(data: bytes, quoted: bool) -> int:
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
    reader = csv.reader(io.StringIO(data.decode(**ENCODING), newline=""))
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
    for number, line in enumerate(lines(data.decode(**ENCODING)), start=1):
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
    def open(cls, directory: Path, fmt: str, job: dict, clear: bool = False) -> tuple["ParquetWriter", Done]:
        pq = pyarrow_parquet()
        if directory.exists() and not directory.is_dir():
            raise OutputError(f"{directory}: Parquet output is a directory of part files, "
                              "but this is a file; choose another output")
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(directory, os.O_RDONLY)
        lock(fd, directory)
        try:
            if clear:
                _clear_parts(directory)
                write_record(directory, fmt, job)
            else:
                check_record(directory, fmt, job, has_rows=any(directory.glob("part-*.parquet")))
            done, next_part = Done(), 0
            for leftover in directory.glob(".*.tmp"):
                leftover.unlink()
            for part in sorted(directory.glob("part-*.parquet")):
                try:
                    table = pq.read_table(part, columns=["path", "error"])
                except Exception as exc:  # pyarrow raises several untyped errors
                    raise OutputError(f"{part}: not a readable Parquet part ({exc}); "
                                      "choose another output") from None
                for path, error in zip(table.column("path").to_pylist(), table.column("error").to_pylist()):
                    done.rows[path] = bool(error)
                next_part = max(next_part, int(part.stem.split("-")[1]) + 1)
        except BaseException:
            os.close(fd)  # the lock goes with it
            raise
        return cls(directory, fd, next_part), done

    def write(self, results: list[Result]) -> None:
        pq = pyarrow_parquet()
        table = arrow_table(results)
        name = f"part-{self.next_part:06d}.parquet"
        tmp = self.directory / f".{name}.tmp"
        pq.write_table(table, tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, self.directory / name)
        os.fsync(self.fd)  # make the rename durable
        self.next_part += 1


def _clear_parts(directory: Path) -> None:
    """Delete the parts (and temporary parts) of an output that is to be overwritten."""
    others = [p.name for p in directory.iterdir()
              if p.suffix not in (".parquet", ".tmp") and p.name != "_graft_job.json"]
    if others:
        raise OutputError(f"{directory}: holds more than Parquet parts ({others[0]}, ...); "
                          "refusing to overwrite it, choose another output")
    for part in directory.iterdir():
        part.unlink()


def pyarrow_parquet():
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise OutputError("Parquet output needs pyarrow; install graft[parquet] "
                          "or write .csv / .jsonl") from None
    return pq
