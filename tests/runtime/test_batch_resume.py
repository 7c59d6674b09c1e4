"""Kill -9 a running `graft predict`, then --resume: every input exactly once, nothing torn."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from graft.runtime.outputs import read_results
from models import solid_image

REPO = Path(__file__).resolve().parents[2]
IMAGES = 1200


@pytest.fixture(scope="module")
def many_images(tmp_path_factory):
    """1,200 images (copies of three 320x240 JPEGs) and three bad files."""
    folder = tmp_path_factory.mktemp("many")
    seeds = {c: solid_image(folder / f"seed-{c}.jpeg", c, size=(320, 240)) for c in ("red", "green", "blue")}
    colors = {}
    for i in range(IMAGES):
        color = ("red", "green", "blue")[i % 3]
        target = folder / "imgs" / f"d{i % 7}" / f"{i:05d}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(seeds[color], target)
        colors[str(target)] = color
    for name in ("broken-1.jpg", "broken-2.jpg", "broken-3.jpg"):
        (folder / "imgs" / name).write_bytes(b"\xff\xd8\xff garbage")
        colors[str(folder / "imgs" / name)] = None
    return folder / "imgs", colors


ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def _graft(*args: str) -> list[str]:
    return [sys.executable, "-m", "graft", *args]


def _rows_written(out: Path) -> int:
    if out.is_dir():
        return len(list(out.glob("part-*.parquet")))
    return out.read_bytes().count(b"\n") if out.exists() else 0


@pytest.mark.parametrize("suffix", ["csv", "jsonl", "parquet"])
def test_kill_9_then_resume_writes_every_input_exactly_once(color_bundle, many_images, tmp_path, suffix):
    folder, colors = many_images
    out = tmp_path / f"out.{suffix}"
    args = ["predict", str(color_bundle), str(folder), "-o", str(out), "--batch-size", "2",
            "--decode-threads", "1", "--top-k", "1", "--no-progress"]
    if suffix == "parquet":
        args += ["--chunk-rows", "8"]
    job = subprocess.Popen(_graft(*args), env=ENV, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while _rows_written(out) < 20 and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    job.send_signal(signal.SIGKILL)
    job.communicate(timeout=30)
    assert job.returncode == -signal.SIGKILL, "the job finished before it could be killed"
    partial = read_results(out)
    assert 0 < len(partial) < len(colors)

    again = subprocess.run(_graft(*args), env=ENV,
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "already exists; pass --resume" in again.stderr

    done = subprocess.run(_graft(*args, "--resume"), env=ENV,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"{len(colors)} inputs" in done.stderr

    rows = read_results(out)
    counts = Counter(r.path for r in rows)
    assert set(counts) == set(colors), "an input is missing or an unknown row was written"
    assert max(counts.values()) == 1, "a row was written twice"
    for row in rows:
        expected = colors[row.path]
        if expected is None:
            assert row.error.startswith(row.path) and row.labels == ()
        else:
            assert row.error == "" and row.labels == (expected,)
    if suffix != "parquet":
        assert out.read_bytes().endswith(b"\n")
