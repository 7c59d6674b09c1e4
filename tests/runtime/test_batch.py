"""Batch inference: inputs, outputs, bad files, resume repair, CLI messages and exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from graft.cli import cli
from graft.errors import GraftError
from graft.runtime.batch import iter_predictions, run_job
from graft.runtime.inputs import expand_inputs
from graft.runtime.outputs import OutputError, job_record, open_output, read_results
from models import solid_image

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def mixed(tmp_path):
    """9 good images (3 per colour, JPEG/PNG/BMP) and 3 bad files, plus one missing path."""
    folder = tmp_path / "imgs"
    good = {}
    for i, (color, suffix) in enumerate([(c, s) for c in ("red", "green", "blue")
                                         for s in ("jpg", "png", "bmp")]):
        good[str(solid_image(folder / "sub" / f"{color}{i}.{suffix}", color, size=(64, 48)))] = color
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.bmp").write_text("hello")
    (folder / "notes.md").write_text("not an image suffix: ignored by directory expansion")
    bad = [str(folder / "corrupt.jpg"), str(folder / "empty.png"), str(folder / "text.bmp")]
    return folder, good, bad


def _check_rows(results, good, bad):
    by_path = {r.path: r for r in results}
    assert len(by_path) == len(results) == len(good) + len(bad)
    for path, color in good.items():
        assert by_path[path].error == ""
        assert by_path[path].labels[0] == color
        assert by_path[path].scores[0] > 0.9
        assert len(by_path[path].labels) == 2
    for path in bad:
        assert by_path[path].labels == () and by_path[path].scores == ()
        assert by_path[path].error.startswith(path)
        assert "\n" not in by_path[path].error


# --------------------------------------------------------------------- inputs
def test_expand_inputs_dirs_globs_lists_dedupe(tmp_path, mixed):
    folder, good, bad = mixed
    listing = tmp_path / "list.csv"
    listing.write_text("path,label\nimgs/sub/red0.jpg,red\n\n" + f"{folder / 'empty.png'},x\n")
    text_list = tmp_path / "list.txt"
    text_list.write_text("imgs/sub/red0.jpg\nimgs/./sub/green3.jpg\n")
    paths = expand_inputs([folder, str(folder / "sub" / "*.png"), listing, text_list,
                           str(folder / "missing.jpg")])
    assert len(paths) == len(set(paths))
    assert set(paths) == set(good) | set(bad) | {str(folder / "missing.jpg")}
    assert paths[:len(good) + len(bad)] == sorted(bad) + sorted(good)  # walk order: stable, sorted


def test_expand_inputs_empty_glob_is_an_error(tmp_path):
    with pytest.raises(GraftError, match="matches no file"):
        expand_inputs([str(tmp_path / "*.jpg")])


# ------------------------------------------------------------------ python API
def test_iter_predictions_mixed_good_and_bad(color_bundle, mixed):
    folder, good, bad = mixed
    results = list(iter_predictions(color_bundle, [folder], top_k=2, batch_size=4, decode_threads=2))
    _check_rows(results, good, bad)
    assert [r.path for r in results] == expand_inputs([folder])  # input order kept


@pytest.mark.parametrize("suffix", ["csv", "jsonl", "parquet"])
def test_run_job_writes_every_format(color_onnx, mixed, tmp_path, suffix):
    folder, good, bad = mixed
    out = tmp_path / f"out.{suffix}"
    summary = run_job(color_onnx, [folder], out, top_k=2, batch_size=2, chunk_rows=3)
    assert (summary.total, summary.ok, summary.failed, summary.resumed) == (12, 9, 3, 0)
    _check_rows(read_results(out), good, bad)
    if suffix == "parquet":
        assert len(list(out.glob("part-*.parquet"))) == 4  # 12 rows in chunks of 3
    if suffix == "csv":
        assert out.read_text().splitlines()[0] == "path,labels,scores,error"


def test_run_job_same_rows_as_classifier_predict(color_bundle, mixed, tmp_path):
    from graft.runtime import Classifier

    folder, good, _ = mixed
    out = tmp_path / "out.jsonl"
    run_job(color_bundle, list(good), out, top_k=3, batch_size=4)
    clf = Classifier.load(color_bundle)
    expected = clf.predict(list(good), top_k=3)
    for row, preds in zip(read_results(out), expected):
        assert list(row.labels) == [p.label for p in preds]
        assert row.scores == pytest.approx([p.score for p in preds], abs=1e-6)


def test_refuses_existing_output_without_resume_or_overwrite(color_onnx, mixed, tmp_path):
    folder, _, _ = mixed
    out = tmp_path / "out.csv"
    out.write_text("keep me\n")
    with pytest.raises(OutputError, match="already exists; pass --resume"):
        run_job(color_onnx, [folder], out)
    assert out.read_text() == "keep me\n"
    summary = run_job(color_onnx, [folder], out, overwrite=True)
    assert summary.written == 12 and len(read_results(out)) == 12


def test_unknown_output_format(color_onnx, mixed, tmp_path):
    with pytest.raises(OutputError, match=r"unknown output format '\.txt'"):
        run_job(color_onnx, [mixed[0]], tmp_path / "out.txt")
    assert not (tmp_path / "out.txt").exists()


def test_bad_model_fails_before_touching_the_output(mixed, tmp_path):
    with pytest.raises(GraftError, match="no such model file"):
        run_job(tmp_path / "missing.onnx", [mixed[0]], tmp_path / "out.csv")
    assert not (tmp_path / "out.csv").exists()


# ---------------------------------------------------------------------- resume
@pytest.mark.parametrize("suffix", ["csv", "jsonl"])
def test_resume_cuts_a_torn_record_and_finishes(color_onnx, mixed, tmp_path, suffix):
    folder, good, bad = mixed
    out = tmp_path / f"out.{suffix}"
    paths = expand_inputs([folder])
    run_job(color_onnx, paths[:5], out, top_k=2, batch_size=2)
    data = out.read_bytes()
    torn = f'{paths[5]},red|gr' if suffix == "csv" else '{"path": "' + paths[5] + '", "lab'
    out.write_bytes(data + torn.encode())  # what a kill in the middle of a write leaves
    summary = run_job(color_onnx, [folder], out, top_k=2, batch_size=2, resume=True)
    assert (summary.resumed, summary.written, summary.failed_before) == (5, 7, 3)
    assert out.read_bytes().startswith(data)
    _check_rows(read_results(out), good, bad)


def test_resume_csv_torn_inside_a_quoted_field(color_onnx, mixed, tmp_path):
    folder, good, bad = mixed
    out = tmp_path / "out.csv"
    run_job(color_onnx, [good_path for good_path in list(good)[:2]], out, top_k=2)
    out.write_bytes(out.read_bytes() + b'x.jpg,,,"x.jpg: a message\nwith a newline')
    run_job(color_onnx, [folder], out, top_k=2, resume=True)
    _check_rows(read_results(out), good, bad)


def test_resume_parquet_ignores_a_leftover_temporary_part(color_onnx, mixed, tmp_path):
    folder, good, bad = mixed
    out = tmp_path / "out.parquet"
    paths = expand_inputs([folder])
    run_job(color_onnx, paths[:6], out, top_k=2, chunk_rows=3)
    (out / ".part-000002.parquet.tmp").write_bytes(b"PAR1 half a file")
    summary = run_job(color_onnx, [folder], out, top_k=2, chunk_rows=3, resume=True)
    assert (summary.resumed, summary.written) == (6, 6)
    assert not list(out.glob("*.tmp"))
    _check_rows(read_results(out), good, bad)


def test_resume_of_a_finished_job_writes_nothing(color_onnx, mixed, tmp_path):
    folder, _, _ = mixed
    out = tmp_path / "out.jsonl"
    run_job(color_onnx, [folder], out)
    before = out.read_bytes()
    summary = run_job(color_onnx, [folder], out, resume=True)
    assert (summary.resumed, summary.written) == (12, 0)
    assert out.read_bytes() == before


def test_resume_refuses_a_file_that_is_not_a_result_file(color_onnx, mixed, tmp_path):
    out = tmp_path / "out.csv"
    out.write_text("name,value\na,1\n")
    with pytest.raises(OutputError, match=r"holds rows but no job record \(out.csv.graft.json\)"):
        run_job(color_onnx, [mixed[0]], out, resume=True)
    assert out.read_text() == "name,value\na,1\n"


def test_a_second_writer_is_refused(tmp_path):
    out = tmp_path / "out.jsonl"
    job = job_record("0" * 64, "m.onnx", 3)
    writer, _ = open_output(out, job)
    try:
        with pytest.raises(OutputError, match="another graft predict is writing"):
            open_output(out, job, resume=True)
    finally:
        writer.close()


# ------------------------------------------------------------------------- CLI
def test_cli_predict_summary_and_exit_codes(color_bundle, mixed, tmp_path):
    folder, good, bad = mixed
    out = tmp_path / "out.csv"
    runner = CliRunner()
    args = ["predict", str(color_bundle), str(folder), "-o", str(out), "--batch-size", "4",
            "--decode-threads", "2", "--top-k", "2"]
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "9 ok, 3 failed, 0 already done" in result.output
    _check_rows(read_results(out), good, bad)

    again = runner.invoke(cli, args)
    assert again.exit_code == 2
    assert again.output.strip().splitlines() == [
        f"error: {out}: already exists; pass --resume to finish that job or --overwrite to replace it"]

    strict = runner.invoke(cli, args + ["--resume", "--strict"])
    assert strict.exit_code == 1  # the earlier failures count
    assert "0 ok, 0 failed, 12 already done (3 failed)" in strict.output

    only_good = runner.invoke(cli, ["predict", str(color_bundle), *good, "-o",
                                    str(tmp_path / "good.jsonl"), "--strict"])
    assert only_good.exit_code == 0 and "9 ok, 0 failed" in only_good.output


def test_cli_predict_to_terminal(color_onnx, mixed):
    folder, good, bad = mixed
    result = CliRunner().invoke(cli, ["predict", str(color_onnx), str(folder), "--top-k", "1"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if "\t" in line]
    assert len(lines) == 12
    for path, color in good.items():
        assert f"{path}\t{color} 0.9" in result.output
    assert "9 ok, 3 failed" in result.output


def test_cli_resume_needs_an_output(color_onnx, mixed):
    result = CliRunner().invoke(cli, ["predict", str(color_onnx), str(mixed[0]), "--resume"])
    assert result.exit_code == 2
    assert "need an output file" in result.output


def test_batch_imports_no_tensorflow_ray_or_pyarrow():
    code = ("import sys, graft.cli, graft.runtime.batch, graft.runtime.inputs, graft.runtime.outputs; "
            "bad = [m for m in ('tensorflow', 'keras', 'tf2onnx', 'ray', 'pyarrow') if m in sys.modules]; "
            "print(bad)")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "[]"


def test_jsonl_rows_are_plain_json(color_onnx, mixed, tmp_path):
    out = tmp_path / "out.jsonl"
    run_job(color_onnx, [mixed[0]], out, top_k=1)
    for line in out.read_text().splitlines():
        assert set(json.loads(line)) == {"path", "labels", "scores", "error"}


def test_cli_progress_bar_shows_rate_and_time_left(color_onnx, mixed, tmp_path, monkeypatch):
    import graft.progress

    monkeypatch.setattr(graft.progress, "stderr_is_terminal", lambda: True)
    result = CliRunner().invoke(cli, ["predict", str(color_onnx), str(mixed[0]), "-o",
                                      str(tmp_path / "out.csv"), "--progress"])
    assert result.exit_code == 0, result.output
    bar = next(line for line in result.output.splitlines() if line.strip().startswith("predict"))
    assert "12/12" in bar and "img/s" in bar and bar.count("0:00:00") == 2  # elapsed, then time left


def test_cli_progress_in_a_log_is_plain_lines(color_onnx, mixed, tmp_path):
    result = CliRunner().invoke(cli, ["predict", str(color_onnx), str(mixed[0]), "-o",
                                      str(tmp_path / "out.csv"), "--progress"])  # stderr is no terminal
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("predict: ")]
    assert len(lines) == 1 and lines[0].startswith("predict: 12/12 done, ") and " img/s, " in lines[0]
    assert "━" not in result.output


def test_overwrite_parquet_replaces_parts_but_never_foreign_files(color_onnx, mixed, tmp_path):
    folder, good, bad = mixed
    out = tmp_path / "out.parquet"
    run_job(color_onnx, [folder], out, chunk_rows=2)
    assert len(list(out.glob("part-*.parquet"))) == 6
    run_job(color_onnx, list(good)[:3], out, overwrite=True)
    assert [r.path for r in read_results(out)] == list(good)[:3]
    (out / "notes.txt").write_text("someone else's file")
    with pytest.raises(OutputError, match="holds more than Parquet parts"):
        run_job(color_onnx, [folder], out, overwrite=True)
    assert (out / "notes.txt").exists() and len(read_results(out)) == 3


def test_unreachable_ray_address_is_a_one_line_error(color_onnx, mixed, tmp_path):
    pytest.importorskip("ray")
    out = tmp_path / "out.csv"
    result = CliRunner().invoke(cli, ["predict", str(color_onnx), str(mixed[0]), "-o", str(out),
                                      "--engine", "ray", "--address", "127.0.0.1:1"])
    assert result.exit_code == 2
    assert result.output.startswith("error: cannot reach a Ray cluster at 127.0.0.1:1")
    assert not out.exists()


def test_txt_lists_take_each_line_as_a_path(color_onnx, tmp_path):
    odd = solid_image(tmp_path / 'photo, "beach".png', "blue")
    (tmp_path / "list.txt").write_text(f"{odd.name}\n")
    assert expand_inputs([str(tmp_path / "list.txt")]) == [str(odd)]
    (row,) = list(iter_predictions(color_onnx, [str(tmp_path / "list.txt")], top_k=1))
    assert row.error == "" and row.labels == ("blue",)


def test_jsonl_resume_with_unicode_line_separators_in_paths(color_onnx, tmp_path):
    odd = solid_image(tmp_path / "a\u2028b\u0085c.png", "red")
    plain = solid_image(tmp_path / "plain.png", "green")
    out = tmp_path / "out.jsonl"
    run_job(color_onnx, [str(odd)], out, top_k=1)
    summary = run_job(color_onnx, [str(odd), str(plain)], out, top_k=1, resume=True)
    assert summary.resumed == 1 and summary.ok == 1
    assert sorted(r.path for r in read_results(out)) == sorted([str(odd), str(plain)])


def test_unwritable_output_is_one_line(color_onnx, mixed, tmp_path):
    folder, _, _ = mixed
    (tmp_path / "a-file").write_text("not a folder")
    result = CliRunner().invoke(cli, ["predict", str(color_onnx), str(folder),
                                      "-o", str(tmp_path / "a-file" / "out.csv")])
    assert result.exit_code == 2 and result.output.startswith("error: ")
    assert result.output.count("\n") == 1 and "Traceback" not in result.output
