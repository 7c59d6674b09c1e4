"""graft on a real Ray cluster: two nodes of 1 CPU each, started with `ray start` on 127.0.0.1,
token auth on (see harness.py). Every command has a timeout, so a hang fails fast.

The tests share one cluster and run in file order: the node-loss tests kill a worker
node's raylet and add a fresh node for the next test.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from graft.runtime.batch import run_job
from graft.runtime.inputs import expand_inputs
from graft.runtime.outputs import read_results
from harness import RayCluster, namespaces_work
from models import make_dataset, solid_image

pytest.importorskip("ray.data")
if namespaces_work():
    pytest.skip(f"a loopback Ray cluster needs a private network namespace: {namespaces_work()}",
                allow_module_level=True)

COMMAND_TIMEOUT = 240  # seconds: a job that hangs fails the test instead of the suite


@pytest.fixture(scope="module")
def cluster():
    with RayCluster((1, 1)) as ray_cluster:
        yield ray_cluster


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shared") / "images"
    colors = ("red", "green", "blue")
    for i in range(48):
        solid_image(folder / f"img{i:02d}.{('jpg', 'png')[i % 2]}", colors[i % 3], size=(40 + i, 32))
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    return folder


def rows_by_path(path: Path) -> dict:
    rows = read_results(path)
    counts = Counter(r.path for r in rows)
    assert max(counts.values()) == 1, [p for p, n in counts.items() if n > 1][:5]
    return {r.path: r for r in rows}


def assert_same_rows(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for path, row in got.items():
        assert (row.labels, row.error) == (want[path].labels, want[path].error), path
        assert row.scores == pytest.approx(want[path].scores, abs=1e-6)


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


def test_predict_with_default_options_uses_both_nodes(cluster, color_bundle, images, tmp_path):
    run_job(color_bundle, [images], tmp_path / "local.jsonl", top_k=2)
    out = cluster.graft("predict", str(color_bundle), str(images), "-o", str(tmp_path / "ray.jsonl"),
                        "--engine", "ray", "--address", cluster.address, "--top-k", "2",
                        "--batch-size", "4", timeout=COMMAND_TIMEOUT)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "48 ok, 1 failed, 0 already done" in out.stderr
    assert "predict: 49/49 rows" in out.stderr  # the progress line, without a terminal
    assert_same_rows(rows_by_path(tmp_path / "ray.jsonl"), rows_by_path(tmp_path / "local.jsonl"))


def test_an_override_no_node_can_hold_is_refused_up_front(cluster, color_bundle, images, tmp_path):
    cases = [(["--actors", "3"], "error: --actors 3 of 1 CPU(s) each cannot be placed: the nodes hold "
                                 "at most 2 (2 node(s): 127.0.0.1 1 CPU, 127.0.0.1 1 CPU)"),
             (["--cpus-per-actor", "2"], "error: --cpus-per-actor 2: no node has 2 CPUs (the biggest "
                                         "has 1; 2 node(s): 127.0.0.1 1 CPU, 127.0.0.1 1 CPU)")]
    for flags, line in cases:
        out = cluster.graft("predict", str(color_bundle), str(images), "-o", str(tmp_path / "o.csv"),
                            "--engine", "ray", "--address", cluster.address, *flags, timeout=COMMAND_TIMEOUT)
        assert (out.returncode, last_line(out.stderr)) == (2, line)
        assert not (tmp_path / "o.csv").exists()


def test_a_refused_token_is_named_in_one_line(cluster, color_bundle, images, tmp_path):
    env = {k: v for k, v in cluster.env.items() if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    out = cluster.graft("predict", str(color_bundle), str(images), "-o", str(tmp_path / "o.csv"),
                        "--engine", "ray", "--address", cluster.address, env=env, timeout=COMMAND_TIMEOUT)
    line = last_line(out.stderr)
    assert out.returncode == 2
    assert line.startswith(f"error: {cluster.address} refused this client: InvalidAuthToken: "
                           "Authentication token is missing or incorrect"), line
    assert "RAY_AUTH_MODE is currently 'disabled'" in line  # Ray's own words
    assert line.endswith("; set RAY_AUTH_MODE=token and give the cluster's token (RAY_AUTH_TOKEN, "
                         "RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token)")
    assert not (tmp_path / "o.csv").exists()


def test_a_job_that_cannot_be_scheduled_stops_and_says_why(cluster, color_bundle, images, tmp_path):
    """Another driver holds every CPU: the job stops after --schedule-timeout, and --resume
    finishes it once the CPUs are free."""
    holder = cluster.popen([sys.executable, "-c", HOLD_CPUS, cluster.address], stdout=-1, stderr=-1)
    try:
        assert holder.stdout.readline().strip() == "holding", holder.stderr.read()[-2000:]
        out = cluster.graft("predict", str(color_bundle), str(images), "-o", str(tmp_path / "o.csv"),
                            "--engine", "ray", "--address", cluster.address, "--schedule-timeout", "8",
                            timeout=COMMAND_TIMEOUT)
    finally:
        holder.kill()
        holder.wait(timeout=30)
    assert out.returncode == 2
    assert last_line(out.stderr) == (
        "error: nothing came back from the Ray cluster in 8 s (--schedule-timeout): 2 actor(s) of "
        "1 CPU(s) each on 2 node(s): 127.0.0.1 1 CPU, 127.0.0.1 1 CPU; the nodes offer 127.0.0.1: "
        "0 of 1 CPU free, 127.0.0.1: 0 of 1 CPU free; the rows written so far are kept: run the same "
        "command with --resume to finish")
    out = cluster.graft("predict", str(color_bundle), str(images), "-o", str(tmp_path / "o.csv"),
                        "--engine", "ray", "--address", cluster.address, "--resume", timeout=COMMAND_TIMEOUT)
    assert out.returncode == 0, out.stderr[-3000:]
    assert len(rows_by_path(tmp_path / "o.csv")) == 49


def build_args(data, out, source_model, cache) -> list[str]:
    return [str(data), "-o", str(out), "--backbone", str(source_model), "--epochs", "6", "--lr", "0.01",
            "--seed", "4", "--cache-dir", str(cache), "--extract", "onnxruntime"]


def test_build_with_default_options_matches_the_local_engine(cluster, dataset, source_model, tmp_path):
    from graft import bundle

    local = cluster.graft("build", *build_args(dataset, tmp_path / "local", source_model, tmp_path / "c1"),
                          timeout=COMMAND_TIMEOUT)
    assert local.returncode == 0, local.stderr[-3000:]
    out = cluster.graft("build", *build_args(dataset, tmp_path / "ray", source_model, tmp_path / "c2"),
                        "--engine", "ray", "--address", cluster.address, timeout=COMMAND_TIMEOUT)
    assert out.returncode == 0, out.stderr[-3000:]
    want, got = (bundle.read_manifest(tmp_path / name) for name in ("local", "ray"))
    record = got["dataset"]["extraction"]
    assert (record["engine"], record["extracted"], record["ray"]["nodes"]) == ("ray", 36, 2)
    assert (record["ray"]["actors"], record["ray"]["cpus_per_actor"]) == (2, 1)
    assert record["ray"]["tensorflow_in_workers"] is False
    assert got["dataset"]["skipped"] == want["dataset"]["skipped"]
    assert got["metrics"] == want["metrics"]
    assert got["training"]["stages"][0]["history"] == want["training"]["stages"][0]["history"]


HOLD_CPUS = """
import sys, time, ray
from ray.util.placement_group import placement_group
ray.init(address=sys.argv[1], log_to_driver=False)
group = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="SPREAD")
ray.get(group.ready(), timeout=60)
print("holding", flush=True)
time.sleep(600)
"""


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.2)


def count_lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except OSError:
        return 0


def test_a_lost_node_loses_and_duplicates_no_row(cluster, color_bundle, tmp_path_factory, tmp_path):
    """The worker node's raylet is killed mid-job: Ray retries on the node left, or the job
    fails and --resume finishes it; either way every input is in the output exactly once."""
    folder = tmp_path_factory.mktemp("shared") / "many"
    for i in range(1500):
        solid_image(folder / f"{i:04d}.png", ("red", "green", "blue")[i % 3], size=(24, 24))
    out = tmp_path / "out.csv"
    worker = cluster.nodes[1]
    with open(tmp_path / "job.log", "w") as log:
        job = cluster.popen([sys.executable, "-m", "graft", "predict", str(color_bundle), str(folder), "-o",
                             str(out), "--engine", "ray", "--address", cluster.address, "--batch-size", "4"],
                            stdout=log, stderr=log)
        try:
            wait_for(lambda: count_lines(out) > 40 or job.poll() is not None, 180, "the first rows")
            assert job.poll() is None, "the job ended before the node could be killed"
            cluster.kill(cluster.raylet_pid(worker))
            job.wait(timeout=COMMAND_TIMEOUT)
        finally:
            job.kill()
    print(f"predict after a lost node: exit {job.returncode}")  # Ray recovered (0), or --resume below
    if job.returncode != 0:  # Ray could not recover: the rows written so far stay, --resume adds the rest
        resumed = cluster.graft("predict", str(color_bundle), str(folder), "-o", str(out), "--engine", "ray",
                                "--address", cluster.address, "--resume", timeout=COMMAND_TIMEOUT)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
    rows = rows_by_path(out)
    assert set(rows) == set(expand_inputs([folder])) and all(r.ok for r in rows.values())
    assert {r.labels[0] for r in rows.values()} == {"red", "green", "blue"}
    cluster.add_node(1)  # the next test has two nodes again


@pytest.fixture(scope="module")
def hidden(tmp_path_factory):
    """Images that the last node added cannot see: enough work that both nodes' actors get some."""
    folder = tmp_path_factory.mktemp("shared") / "hidden"
    for i in range(300):
        solid_image(folder / f"{i:03d}.png", ("red", "green", "blue")[i % 3], size=(24, 24))
    return folder


def test_a_lost_node_in_a_build_is_extracted_again_and_leaves_whole_shards(cluster, source_model,
                                                                           tmp_path, hidden):
    import numpy as np

    from graft import bundle
    from graft.builder.shards import ShardStore

    data = make_dataset(tmp_path / "data", per_class=200)
    cache, out = tmp_path / "cache", tmp_path / "bundle"
    worker = cluster.nodes[-1]
    argv = [sys.executable, "-m", "graft", "build", *build_args(data, out, source_model, cache),
            "--engine", "ray", "--address", cluster.address, "--batch-size", "4"]
    with open(tmp_path / "build.log", "w") as log:
        job = cluster.popen(argv, stdout=log, stderr=log)
        try:
            wait_for(lambda: cluster.actor_on(worker, "FeatureWorker") or job.poll() is not None, 180,
                     "a feature actor on the worker node")
            assert job.poll() is None, (tmp_path / "build.log").read_text()[-3000:]
            cluster.kill(cluster.raylet_pid(worker))
            job.wait(timeout=COMMAND_TIMEOUT)
        finally:
            job.kill()
    folder = next(cache.glob("features/*/onnxruntime-*"))
    assert not [p.name for p in folder.iterdir() if not p.name.startswith("shard-")]  # no temporary files
    print(f"build after a lost node: exit {job.returncode}")
    if job.returncode != 0:  # the shards that came back stay; a second build extracts the rest
        again = cluster.graft(*argv[3:], "--overwrite", timeout=COMMAND_TIMEOUT)
        assert again.returncode == 0, again.stderr[-3000:]
    record = bundle.read_manifest(out)["dataset"]["extraction"]
    assert record["extracted"] + record["cache_hits"] == 600 and record["skipped"] == 0
    index = ShardStore(folder).index()
    assert len(index) == len(np.unique(index.keys)) == 600  # each image once, in whole shards
    for keys in folder.glob("shard-*.keys.npy"):
        assert (folder / keys.name.replace(".keys.npy", ".npy")).is_file()
    # The next test's worker node cannot see the shared images (its own mount namespace).
    hide = ["unshare", "-m", "--propagation", "private", "sh", "-c", 'mount -t tmpfs tmpfs "$0" && exec "$@"',
            str(hidden)]
    cluster.add_node(1, prefix=hide)


def test_an_input_a_node_cannot_read_is_a_row_error_naming_that_node(cluster, color_bundle, hidden,
                                                                     tmp_path):
    blind = cluster.node_id(cluster.nodes[-1])[:8]
    run_job(color_bundle, [hidden], tmp_path / "local.jsonl", top_k=2)
    out = cluster.graft("predict", str(color_bundle), str(hidden), "-o", str(tmp_path / "ray.jsonl"),
                        "--engine", "ray", "--address", cluster.address, "--top-k", "2", "--batch-size", "2",
                        timeout=COMMAND_TIMEOUT)
    assert out.returncode == 0, out.stderr[-3000:]
    want, got = rows_by_path(tmp_path / "local.jsonl"), rows_by_path(tmp_path / "ray.jsonl")
    assert set(got) == set(want)
    unread = {p for p, r in got.items() if f"(id {blind}), which cannot read it" in r.error}
    assert unread and len(unread) < len(got)  # the job went on, on both nodes
    assert_same_rows({p: r for p, r in got.items() if p not in unread},
                     {p: r for p, r in want.items() if p not in unread})
