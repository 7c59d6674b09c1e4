"""The Spark adapter on a standalone cluster: a master and a worker started with the
spark-class script pyspark ships, on 127.0.0.1; its rows equal the local engine's."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from graft.runtime.batch import run_job
from graft.runtime.outputs import read_results
from harness import REPO
from models import solid_image
from spark_rows import assert_rows_match_local

pyspark = pytest.importorskip("pyspark")
pytest.importorskip("pandas")
if shutil.which("java") is None:
    pytest.skip("Spark needs a Java runtime", allow_module_level=True)

START_TIMEOUT = 120  # seconds for the master and its worker to come up


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def alive_workers(ui_port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{ui_port}/json/", timeout=5) as answer:
            return sum(w.get("state") == "ALIVE" for w in json.load(answer).get("workers", []))
    except OSError:
        return 0


@pytest.fixture(scope="module")
def spark_master(tmp_path_factory):
    """spark://127.0.0.1:PORT with one worker of 1 core; both stopped by PID at the end."""
    home = Path(pyspark.__file__).parent
    work = tmp_path_factory.mktemp("spark")
    env = {**os.environ, "SPARK_HOME": str(home), "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_DAEMON_MEMORY": "256m",
           "PYSPARK_PYTHON": sys.executable,
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    port, ui, worker_ui = free_port(), free_port(), free_port()
    spark_class = str(home / "bin" / "spark-class")
    commands = [[spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port",
                 str(port), "--webui-port", str(ui)],
                [spark_class, "org.apache.spark.deploy.worker.Worker", f"spark://127.0.0.1:{port}", "--host",
                 "127.0.0.1", "--cores", "1", "--memory", "1g", "--webui-port", str(worker_ui),
                 "--work-dir", str(work / "work")]]
    processes = []
    try:
        for i, command in enumerate(commands):
            log = open(work / f"daemon{i}.log", "w")
            processes.append(subprocess.Popen(command, env=env, stdout=log, stderr=log, start_new_session=True))
        deadline = time.monotonic() + START_TIMEOUT
        while alive_workers(ui) < 1:
            if time.monotonic() > deadline or any(p.poll() is not None for p in processes):
                logs = "".join((work / f"daemon{i}.log").read_text()[-1500:] for i in range(len(processes)))
                raise RuntimeError(f"the Spark master and worker did not come up: {logs}")
            time.sleep(0.5)
        yield f"spark://127.0.0.1:{port}"
    finally:
        for process in processes:  # each runs in its own session: its group is its JVM and nothing else
            with _suppress():
                os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


class _suppress:
    def __enter__(self):
        return self

    def __exit__(self, kind, *rest):
        return kind is ProcessLookupError


def test_spark_udf_on_a_standalone_cluster_matches_the_local_engine(spark_master, color_bundle, tmp_path):
    from pyspark.sql import SparkSession

    from graft.runtime.spark import predict_udf

    colors = ("red", "green", "blue")
    paths = [str(solid_image(tmp_path / f"img{i}.png", colors[i % 3], size=(30 + i, 24))) for i in range(24)]
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    paths.append(str(tmp_path / "broken.jpg"))
    run_job(color_bundle, paths, tmp_path / "local.jsonl", top_k=2)
    want = {r.path: r for r in read_results(tmp_path / "local.jsonl")}

    session = (SparkSession.builder.master(spark_master).appName("graft-standalone")
               .config("spark.driver.host", "127.0.0.1").config("spark.driver.bindAddress", "127.0.0.1")
               .config("spark.ui.enabled", "false").config("spark.executor.memory", "512m")
               .config("spark.cores.max", "1").config("spark.sql.shuffle.partitions", "2")
               .config("spark.executorEnv.PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
               .getOrCreate())
    try:
        session.sparkContext.setLogLevel("ERROR")
        assert session.sparkContext.master == spark_master
        frame = session.createDataFrame([(p,) for p in paths], "path string").repartition(3)
        rows = (frame.withColumn("p", predict_udf(color_bundle, top_k=2)("path"))
                .select("path", "p.*").collect())
        executors = session.sparkContext._jsc.sc().getExecutorMemoryStatus().size()
    finally:
        session.stop()
    assert executors == 2  # the driver and the worker's executor: the rows came from the cluster
    assert_rows_match_local(rows, paths, want)
