"""The batch job's core as a Spark pandas UDF (optional: ``graft[spark]``).

    from graft.runtime.spark import predict_udf

    predict = predict_udf("/shared/bundle", top_k=3)
    images = spark.read.text("paths.txt").withColumnRenamed("value", "path")
    result = images.withColumn("prediction", predict("path")).select("path", "prediction.*")
    result.write.parquet("predictions.parquet")

The UDF takes a column of image paths and returns a struct of ``labels``,
``scores`` and ``error`` per row, the same values as ``graft predict``. It is
an iterator UDF, so each Spark task loads the model once and decodes each Arrow
batch in a thread pool. Bad files become rows with an error. Spark writes and
retries the output; the model and images must be readable on every executor.
"""

from __future__ import annotations

import os
from typing import Iterator

import pandas as pd  # a pyspark dependency; the UDF's type hints name it

from graft.errors import GraftError

RESULT_SCHEMA = "labels array<string>, scores array<float>, error string"  # pipeline.COLUMNS


def predict_frames(model: str | os.PathLike, paths: Iterator[pd.Series], *, top_k: int = 3,
                   decode_threads: int | None = None, device: str = "auto",
                   model_threads: int | None = None) -> Iterator[pd.DataFrame]:
    """pandas Series of paths in, pandas DataFrames (labels, scores, error) out, model loaded once."""
    from graft.runtime.pipeline import decode_pool, load_classifier, predict_batch

    clf = load_classifier(model, device, model_threads)
    with decode_pool(decode_threads) as pool:
        for series in paths:
            results = predict_batch(clf, [str(p) for p in series], top_k, pool)
            yield pd.DataFrame({"labels": [list(r.labels) for r in results],
                                "scores": [list(r.scores) for r in results],
                                "error": [r.error for r in results]})


def predict_udf(model: str | os.PathLike, *, top_k: int = 3, decode_threads: int | None = None,
                device: str = "auto", model_threads: int | None = None):
    """A Spark pandas UDF classifying a column of image paths (see the module doc)."""
    try:
        from pyspark.sql.functions import pandas_udf
    except ImportError:
        raise GraftError("the Spark adapter needs pyspark; install graft[spark]") from None
    model = os.path.abspath(model)

    @pandas_udf(RESULT_SCHEMA)
    def predict(paths: Iterator[pd.Series]) -> Iterator[pd.DataFrame]:
        yield from predict_frames(model, paths, top_k=top_k, decode_threads=decode_threads, device=device,
                                  model_threads=model_threads)

    return predict
