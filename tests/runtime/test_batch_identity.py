"""--resume finishes the same job or refuses, leaving the output untouched; memory stays bounded."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from graft.cli import cli
from graft.runtime.batch import run_job
from graft.runtime.outputs import OutputError
from models import color_manifest, make_color_onnx, solid_image


@pytest.fixture()
def images(tmp_path):
    return [str(solid_image(tmp_path / "imgs" / f"{c}{i}.png", c)) for i in range(3)
            for c in ("red", "green", "blue")]


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_resume_with_another_model_is_refused_and_nothing_changes(tmp_path, images, suffix):
    first = make_color_onnx(tmp_path / "m1.onnx")
    manifest = color_manifest()
    manifest["labels"] = ["r", "g", "b"]
    second = make_color_onnx(tmp_path / "m2.onnx", manifest=manifest)
    out = tmp_path / f"out{suffix}"
    run_job(first, images, out)
    snapshot = sorted((p.name, p.read_bytes()) for p in ([out] if out.is_file() else out.iterdir()))
    result = CliRunner().invoke(cli, ["predict", str(second), *images, "-o", str(out), "--resume"])
    assert result.exit_code == 2
    assert "written by another job: model_sha256" in result.output
    assert sorted((p.name, p.read_bytes()) for p in ([out] if out.is_file() else out.iterdir())) == snapshot
    other_k = CliRunner().invoke(cli, ["predict", str(first), *images, "-o", str(out), "--resume", "--top-k", "2"])
    assert other_k.exit_code == 2 and "top_k 3 (now 2)" in other_k.output
    same = CliRunner().invoke(cli, ["predict", str(first), *images, "-o", str(out), "--resume"])
    assert same.exit_code == 0 and "9 already done" in same.output


def test_a_foreign_file_without_a_final_newline_is_not_cut(tmp_path, images):
    model = make_color_onnx(tmp_path / "m.onnx")
    out = tmp_path / "notes.csv"
    out.write_bytes(b"path,labels,scores,error\nmine.png,red,0.9,\npartial line with no newline")
    before = out.read_bytes()
    with pytest.raises(OutputError, match="holds rows but no job record"):
        run_job(model, images, out, resume=True)
    assert out.read_bytes() == before


def test_checking_many_images_needs_no_more_memory_than_a_few(tmp_path, monkeypatch):
    """The check's images stream in batches: peak traced memory stays flat as images grow."""
    import tracemalloc

    from graft import bundle
    from graft.exporters import parity

    monkeypatch.setattr(parity, "IN_MEMORY_BYTES", 1 << 20)  # as if the split were far too big to keep
    size = 64
    model = make_color_onnx(tmp_path / "b" / "exports" / "model.float32.onnx", size)
    manifest = color_manifest(size)
    bundle.write_manifest(tmp_path / "b", manifest)
    files = [solid_image(tmp_path / "img" / f"{c}.png", c, size=(size, size)) for c in ("red", "green", "blue")]

    def peak(count: int) -> int:
        rows = [{"path": f"{i}.png", "file": str(files[i % 3]), "label": manifest["labels"][i % 3],
                 "split": "test"} for i in range(count)]
        bundle.write_splits(tmp_path / "b", tmp_path / "img", rows)
        held = parity.CheckImages(tmp_path / "b", limit=None)
        tracemalloc.start()
        probs = parity.run_file(model, held)
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert probs.shape == (count, 3) and (probs.argmax(1) == held.y).all()
        return top

    small, large = peak(200), peak(2000)  # 2.5 MB and 25 MB of pixels if held at once
    assert large < small * 1.5 and large < 8 * 2**20


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_a_file_name_that_is_not_utf8_is_one_row_and_resumes(tmp_path, suffix):
    """Linux file names are bytes; one that is not UTF-8 gets escapes in its row, never stops a job."""
    import os

    model = make_color_onnx(tmp_path / "m.onnx")
    folder = tmp_path / "imgs"
    solid_image(folder / "a.png", "red")
    odd = os.fsencode(str(folder)) + b"/x\xff.png"
    with open(odd, "wb") as fh:
        fh.write((folder / "a.png").read_bytes())
    out = tmp_path / f"out{suffix}"
    summary = run_job(model, [folder], out)
    assert summary.ok == 2 and summary.failed == 0
    again = run_job(model, [folder], out, resume=True)
    assert again.resumed == 2 and again.written == 0  # the escaped key matches on resume
    from graft.runtime.outputs import read_results

    paths = sorted(r.path for r in read_results(out))
    assert paths[1].endswith("x\\xff.png") and all(r.labels[0] == "red" for r in read_results(out))


def test_a_model_with_a_fixed_batch_size_takes_any_number_of_images(tmp_path):
    from graft.runtime import Classifier

    model = make_color_onnx(tmp_path / "fixed.onnx", fixed_batch=4)
    images = [solid_image(tmp_path / f"{c}{i}.png", c) for i in range(2) for c in ("red", "green", "blue")]
    clf = Classifier.load(model, device="cpu")
    assert [p[0].label for p in clf.predict(images, top_k=1, batch_size=3)] == ["red", "green", "blue"] * 2
    result = CliRunner().invoke(cli, ["predict", str(model), *map(str, images[:3]), "--top-k", "1"])
    assert result.exit_code == 0 and result.output.count("\tred ") == 1
