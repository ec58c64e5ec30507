"""distil.demo.report_data: the score histogram reads only the files the run's manifest lists."""

from __future__ import annotations

import uuid

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from distil import storage
from distil.demo.report_data import _numel, score_histogram


def _write(url: str, probs: list[list[float]], sources: list[str]) -> None:
    fs, path = storage.get_fs(url)
    with fs.open(path, "wb") as f:
        pq.write_table(pa.table({"probs": probs, "source_file": sources}), f)


def test_score_histogram_counts_p_positive_per_file():
    run = f"memory://demo-hist-{uuid.uuid4().hex[:8]}/scored"
    _write(run + "/a.parquet", [[0.9, 0.1], [0.2, 0.8], [0.0, 1.0]],
           ["s3://b/r/movie.jsonl", "s3://b/r/movie.jsonl", "s3://b/r/amazon.jsonl"])  # fmt: skip
    _write(run + "/b.parquet", [[0.6, 0.4]], ["s3://b/r/movie.jsonl"])
    _write(run + "/orphan.parquet", [[0.5, 0.5]] * 10, ["s3://b/r/movie.jsonl"] * 10)
    storage.commit(run, {"files": ["a.parquet", "b.parquet"]})  # orphan: not committed
    summary = {"rows_in": 5, "scored": 4, "dead_letter": 1, "teacher_agreement": None, "x": 1}

    out = score_histogram(run, summary, bins=4)

    assert out["histogram"]["edges"] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert out["histogram"]["counts"] == {"movie.jsonl": [1, 1, 0, 1], "amazon.jsonl": [0, 0, 0, 1]}
    assert out["rows"] == 4
    assert out["summary"] == {"rows_in": 5, "scored": 4, "dead_letter": 1,
                              "teacher_agreement": None}  # fmt: skip


def test_score_histogram_needs_a_committed_run():
    with pytest.raises(storage.NotCommittedError):
        score_histogram(f"memory://demo-hist-{uuid.uuid4().hex[:8]}/none", {})


def test_numel():
    assert _numel([3, 4, 5]) == 60 and _numel([]) == 1
