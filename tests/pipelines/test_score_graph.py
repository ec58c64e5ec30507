"""The DoFns around the model, one element at a time (the pipelines are tested end to end in
test_score_*.py): reviews read into Arrow batches, predictions turned into scored batches
column by column, and parts cut from batches."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.ml.inference.base import PredictionResult
from apache_beam.pvalue import TaggedOutput

from distil.data.readers import review_files
from distil.pipelines.inference import ERROR, WORKER
from distil.pipelines.score_graph import COUNTS, DEAD, ReadReviews, ToScored, WriteParts
from distil.score import scored

KEEP = [("stars", "int64")]


def _read(tmp_path, batch_rows: int):
    rows = [{"id": f"r{i}", "text": f"review {i}", "stars": i} for i in range(7)]
    rows.insert(3, {"id": "bad"})  # no text: a dead letter, between two batches' rows
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = list(ReadReviews("text", "id", "auto", KEEP, batch_rows).process(
        review_files.FileRange(str(path))))  # fmt: skip
    main = [o for o in out if not isinstance(o, TaggedOutput)]
    tagged = {o.tag: [] for o in out if isinstance(o, TaggedOutput)}
    for o in out:
        if isinstance(o, TaggedOutput):
            tagged[o.tag].append(o.value)
    return main, tagged


def test_reviews_are_read_into_arrow_batches_and_every_record_is_counted(tmp_path):
    batches, tagged = _read(tmp_path, batch_rows=3)
    assert [b.num_rows for b in batches] == [3, 3, 1]
    table = pa.Table.from_batches(batches)
    assert table.column("id").to_pylist() == [f"r{i}" for i in range(7)]
    assert table.column("stars").to_pylist() == list(range(7))
    assert table.column("source_row").to_pylist() == [0, 1, 2, 4, 5, 6, 7]
    assert [d["id"] for d in tagged[DEAD]] == ["bad"]
    assert tagged[COUNTS][0]["records"] == 8  # 7 reviews + 1 dead letter


def test_predictions_become_one_scored_batch_and_a_failed_row_a_dead_letter(tmp_path):
    (batch,), _ = _read(tmp_path, batch_rows=10)
    n = batch.num_rows
    probs = np.random.default_rng(0).dirichlet([1, 1], n).astype(np.float32)
    inf = {
        "label_id": probs.argmax(-1), "probs": probs, "truncated": np.arange(n) == 2,
        "n_tokens": np.full(n, 5, np.int32),
        ERROR: [None, "RuntimeError: too long", *[None] * (n - 2)], WORKER: "host:1",
    }  # fmt: skip
    schema = scored.scored_schema(KEEP)
    fn = ToScored("run-1", {0: "negative", 1: "positive"}, "fp", schema)
    out = list(fn.process(PredictionResult(batch, inf, "fp")))
    dead = [o.value for o in out if isinstance(o, TaggedOutput)]
    assert [(d["id"], d["reason"]) for d in dead] == [("r1", review_files.INFERENCE_ERROR)]
    assert dead[0]["detail"] == "RuntimeError: too long" and dead[0]["raw"] == "review 1"
    ((worker, rows),) = [o for o in out if not isinstance(o, TaggedOutput)]
    assert worker == "host:1" and rows.schema == schema
    keep = [i for i in range(n) if i != 1]
    got = rows.to_pylist()
    assert [r["id"] for r in got] == [f"r{i}" for i in keep]
    for r, i in zip(got, keep, strict=True):
        assert r["label"] == ["negative", "positive"][int(probs[i].argmax())]
        assert r["score"] == probs[i].max() and r["probs"] == probs[i].tolist()
        assert r["truncated"] == (i == 2) and r["stars"] == i
        assert r["text_sha256"] == review_files.text_sha256(f"review {i}")
        assert r["run_id"] == "run-1" and r["model_fingerprint"] == "fp"

    # the writer cuts parts of rows_per_file rows out of the batches
    writer = WriteParts(str(tmp_path / "run"), "a/scored", "scored", "run-1", 4, schema)
    writer.start_bundle()
    parts = list(writer.process((worker, rows))) + [w.value for w in writer.finish_bundle()]
    assert [p["rows"] for p in parts] == [4, 2]
    assert [p["workers"] for p in parts] == [{"host:1": 4}, {"host:1": 2}]
    assert sum(p["truncated"] for p in parts) == 1
    back = pa.concat_tables(pq.read_table(tmp_path / "run" / p["name"]) for p in parts)
    assert back.schema == schema and back.column("id").to_pylist() == [r["id"] for r in got]
