"""Result files of batch inference: CSV, JSONL or Parquet, chosen by the suffix.

``open_output`` decides what may happen to an existing output (refuse it,
resume it, or overwrite it) and checks that a resumed output was written by the
same job: the same model file (sha256), top-k and columns, recorded beside the
rows when the job started. A mismatch is refused before anything is changed.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import graft
from graft.runtime.inputs import ENCODING
from graft.runtime.pipeline import COLUMNS, Result
from graft.runtime.writers import (Done, OutputError, ParquetWriter, ResultWriter, TextWriter,
                                   complete_end, lines, pyarrow_parquet)

OUTPUT_SUFFIXES = (".csv", ".jsonl", ".parquet")

__all__ = ["OUTPUT_SUFFIXES", "Done", "OutputError", "ResultWriter", "job_record", "open_output",
           "output_format", "read_results"]


def output_format(output: str | os.PathLike) -> str:
    """'csv', 'jsonl' or 'parquet' from the output's suffix; OutputError for anything else."""
    suffix = Path(output).suffix.lower()
    if suffix not in OUTPUT_SUFFIXES:
        raise OutputError(f"{output}: unknown output format {suffix or '(no suffix)'!r}; "
                          f"allowed: {', '.join(OUTPUT_SUFFIXES)}")
    return suffix[1:]


def job_record(model_sha256: str, model_name: str, top_k: int, artifact: str | None = None) -> dict:
    """What identifies a job's rows: the model file's sha256, top-k and the columns."""
    return {"graft_job": 1, "model_sha256": model_sha256, "model": model_name, "artifact": artifact,
            "top_k": int(top_k), "columns": list(COLUMNS), "graft_version": graft.__version__}


def open_output(output: str | os.PathLike, job: dict, resume: bool = False,
                overwrite: bool = False) -> tuple[ResultWriter, Done]:
    """Open ``output`` for appending; with ``resume``, check and repair it and return what is done.

    Args:
        output: a .csv, .jsonl or .parquet path.
        job: this job's record (``job_record``); a resumed output must carry the same.
        resume: finish an existing output of the same job.
        overwrite: replace an existing output (cleared once it is locked).
    """
    fmt = output_format(output)
    path = Path(output)
    exists = path.exists() or path.is_symlink()
    if exists and not (resume or overwrite):
        raise OutputError(f"{output}: already exists; pass --resume to finish that job "
                          "or --overwrite to replace it")
    writer_class = ParquetWriter if fmt == "parquet" else TextWriter
    return writer_class.open(path, fmt, job, clear=overwrite and not resume)


def read_results(output: str | os.PathLike) -> list[Result]:
    """Read a result file (any of the three formats) back; a torn last record is left out."""
    fmt = output_format(output)
    if fmt == "parquet":
        pq = pyarrow_parquet()
        rows = [row for part in sorted(Path(output).glob("part-*.parquet"))
                for row in pq.read_table(part).to_pylist()]
    else:
        data = Path(output).read_bytes()
        text = data[:complete_end(data, quoted=fmt == "csv")].decode(**ENCODING)
        if fmt == "jsonl":
            rows = [json.loads(line) for line in lines(text)]
        else:
            rows = [{"path": r["path"], "labels": [x for x in r["labels"].split("|") if x],
                     "scores": [float(x) for x in r["scores"].split("|") if x], "error": r["error"]}
                    for r in csv.DictReader(io.StringIO(text, newline=""))]
    return [Result(r["path"], tuple(r["labels"] or ()), tuple(r["scores"] or ()), r["error"] or "")
            for r in rows]
