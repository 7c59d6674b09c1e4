"""The Ray Data engine in local mode (num_cpus=2): same rows as the local engine."""

from __future__ import annotations

from collections import Counter

import pytest
from click.testing import CliRunner

from graft.cli import cli
from graft.runtime.batch import run_job
from graft.runtime.inputs import expand_inputs
from graft.runtime.outputs import read_results
from models import solid_image

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ray-imgs")
    colors = ("red", "green", "blue")
    for i in range(30):
        solid_image(folder / f"img{i:02d}.{('jpg', 'png')[i % 2]}", colors[i % 3], size=(48 + i, 40))
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    (folder / "empty.png").write_bytes(b"")
    return folder


def test_ray_engine_matches_local_engine(local_ray, color_bundle, images, tmp_path):
    local = run_job(color_bundle, [images], tmp_path / "local.jsonl", top_k=3, batch_size=4)
    remote = run_job(color_bundle, [images], tmp_path / "ray.jsonl", top_k=3, batch_size=4,
                     engine="ray", actors=2, decode_threads=1)
    assert (remote.ok, remote.failed) == (local.ok, local.failed) == (30, 2)
    want = {r.path: r for r in read_results(tmp_path / "local.jsonl")}
    got = read_results(tmp_path / "ray.jsonl")
    assert [r.path for r in got] == expand_inputs([images])  # same rows, same order
    for row in got:
        assert row.labels == want[row.path].labels
        assert row.scores == pytest.approx(want[row.path].scores, abs=1e-6)
        assert row.error == want[row.path].error  # errors name the path as given


def test_ray_engine_resumes_a_partial_parquet_output(local_ray, color_onnx, images, tmp_path):
    out = tmp_path / "out.parquet"
    paths = expand_inputs([images])
    run_job(color_onnx, paths[:11], out, chunk_rows=5)
    summary = run_job(color_onnx, [images], out, engine="ray", resume=True, batch_size=8)
    assert (summary.resumed, summary.written) == (11, len(paths) - 11)
    counts = Counter(r.path for r in read_results(out))
    assert set(counts) == set(paths) and max(counts.values()) == 1


def test_cli_engine_ray(local_ray, color_bundle, images, tmp_path):
    out = tmp_path / "out.csv"
    result = CliRunner().invoke(cli, ["predict", str(color_bundle), str(images), "-o", str(out),
                                      "--engine", "ray", "--batch-size", "8", "--top-k", "1"])
    assert result.exit_code == 0, result.output
    assert "30 ok, 2 failed, 0 already done" in result.output
    rows = read_results(out)
    assert len(rows) == 32
    assert {r.labels for r in rows if r.ok} == {("red",), ("green",), ("blue",)}
