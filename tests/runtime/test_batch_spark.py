"""The Spark adapter: a pandas UDF over a column of paths, same rows as the local engine."""

from __future__ import annotations

import os
import shutil
import sys

import pytest

from graft.runtime.batch import run_job
from graft.runtime.outputs import read_results
from models import solid_image
from spark_rows import assert_rows_match_local

pytest.importorskip("pyspark")
pytest.importorskip("pandas")
if shutil.which("java") is None:
    pytest.skip("Spark needs a Java runtime", allow_module_level=True)


@pytest.fixture(scope="module")
def spark():
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # workers: this interpreter
    session = (SparkSession.builder.master("local[2]").appName("graft-test")
               .config("spark.ui.enabled", "false").config("spark.sql.shuffle.partitions", "2")
               .getOrCreate())
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


def test_spark_udf_matches_local_engine(spark, color_bundle, tmp_path):
    from graft.runtime.spark import predict_udf

    colors = ("red", "green", "blue")
    paths = [str(solid_image(tmp_path / f"img{i}.png", colors[i % 3])) for i in range(12)]
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    paths.append(str(tmp_path / "broken.jpg"))
    run_job(color_bundle, paths, tmp_path / "local.jsonl", top_k=2)
    want = {r.path: r for r in read_results(tmp_path / "local.jsonl")}

    frame = spark.createDataFrame([(p,) for p in paths], "path string").repartition(2)
    rows = (frame.withColumn("p", predict_udf(color_bundle, top_k=2)("path"))
            .select("path", "p.*").collect())
    assert_rows_match_local(rows, paths, want)
