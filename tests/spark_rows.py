"""The check both Spark tests make: the UDF's rows equal the local engine's, input for input."""

from __future__ import annotations

import pytest


def assert_rows_match_local(rows, paths: list[str], want: dict) -> None:
    """``rows`` (Spark Rows of path, labels, scores, error) against ``want`` ({path: local Result})."""
    assert sorted(row["path"] for row in rows) == sorted(paths)
    for row in rows:
        expected = want[row["path"]]
        assert tuple(row["labels"]) == expected.labels
        assert list(row["scores"]) == pytest.approx(expected.scores, abs=1e-6)
        assert row["error"] == expected.error
