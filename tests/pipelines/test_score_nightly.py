"""distil score as the nightly job runs it: incremental over an accumulating input folder, a
Hive-partitioned dataset read by DuckDB and pyarrow.dataset, kept input columns, inference errors
dead-lettered, Beam metrics. Real Beam (FnApiRunner), real SeaweedFS S3, a tiny real classifier
whose position table (40) is shorter than --max-length (128): a review longer than 40 tokens makes
the model raise, as a real model does on an input it cannot take."""

from __future__ import annotations

import io
import json
import uuid

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from score_fixtures import run_score

from distil import storage
from distil.score import scored

RAISES = "this review is far too long for the model " * 8  # ~72 tokens > 40 positions
KEEP = ["product", "stars:int64"]


@pytest.fixture(scope="module")
def short_model_url(s3_server, real_tokenizer_dir):
    """A tiny classifier with 40 positions, exported the way distil finetune does."""
    import torch
    from bert_fixtures import tiny_bert_config
    from transformers import AutoTokenizer, BertForSequenceClassification

    from distil.sentiment.classifier import export_classifier

    torch.manual_seed(0)
    cfg = tiny_bert_config(
        num_labels=2,
        id2label={0: "negative", 1: "positive"},
        label2id={"negative": 0, "positive": 1},
        initializer_range=0.5,
        max_position_embeddings=40,
    )
    model = BertForSequenceClassification(cfg).eval()
    tok = AutoTokenizer.from_pretrained(real_tokenizer_dir)
    url = f"s3://{s3_server.bucket}/models/short-{uuid.uuid4().hex[:6]}"
    export_classifier(model, tok, url, {"accuracy": None, "note": "random weights"})
    return url


def _jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def _parquet(rows: list[dict]) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf)
    return buf.getvalue()


def _score(inputs, model_url, output, run_id, tmp_path, **kw) -> dict:
    return run_score(inputs, model_url, output, run_id, tmp_path, max_length=128, batch_size=4,
                     micro_batch_size=4, rows_per_file=3, keep_columns=KEEP, incremental=True,
                     max_inference_error_rate=0.5, **kw)  # fmt: skip


def _duckdb(output: str, table: str) -> list[dict]:
    """The dataset as a warehouse user reads it: DuckDB over every Parquet file under it, Hive
    partitions on. (DuckDB reaches the S3 server through fsspec here; with its httpfs extension
    the same query takes an s3:// URL and an S3 secret.)"""
    import duckdb

    fs, path = storage.get_fs(output)
    fs.invalidate_cache()
    con = duckdb.connect()
    con.register_filesystem(fs)
    rel = con.sql(
        f"SELECT * FROM read_parquet('s3://{path}/{table}/**/*.parquet', hive_partitioning = true)"
    )
    cols = rel.columns
    return [dict(zip(cols, r, strict=True)) for r in rel.fetchall()]


def _arrow_dataset(output: str, table: str) -> list[dict]:
    import pyarrow.dataset as ds

    fs, path = storage.arrow_filesystem(storage.join(output, table))
    return (
        ds.dataset(path, filesystem=fs, format="parquet", partitioning="hive")
        .to_table()
        .to_pylist()
    )


def _key(r: dict) -> tuple:
    return (r["source_file"].rsplit("/", 1)[1], r["source_row"], r["run_id"])


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_three_nights_score_each_file_once_per_content_into_one_dataset(
    short_model_url, s3_server, tmp_path
):
    base = f"s3://{s3_server.bucket}/nightly-{uuid.uuid4().hex[:8]}"
    incoming, output = f"{base}/incoming", f"{base}/scored"
    put = lambda name, data: storage.write_bytes(f"{incoming}/{name}", data)  # noqa: E731

    # night 1: two files
    put("a.jsonl", _jsonl([{"id": f"a{i}", "text": f"a fine film {i}", "product": "p-a",
                            "stars": i + 1} for i in range(3)]))  # fmt: skip
    put("b.csv", b"id,text,product,stars\nb0,dull and slow,p-b,2\nb1,loved it,p-b,5\n")
    s1 = _score([incoming], short_model_url, output, "n1", tmp_path, date="2026-12-01")
    assert (s1["rows_in"], s1["scored"], s1["dead_letter"]) == (5, 5, 0)
    assert s1["files_skipped"] == 0 and s1["files_changed"] == []

    # night 2: one new file, with a row the model raises on and a kept value that is no int
    put("c.jsonl", _jsonl([
        {"id": "c0", "text": "short and sweet", "product": "p-c", "stars": 4},
        {"id": "c1", "text": RAISES, "product": "p-c", "stars": 1},
        {"id": "c2", "text": "the ending was great", "product": "p-c", "stars": 5.0},
        {"id": "c3", "text": "fine otherwise", "product": "p-c", "stars": "four"},
    ]))  # fmt: skip
    s2 = _score([incoming], short_model_url, output, "n2", tmp_path, date="2026-12-02")
    assert [f["file"].rsplit("/", 1)[1] for f in s2["files_in"]] == ["c.jsonl"]
    assert s2["files_skipped"] == 2
    assert s2["rows_in"] == 4 == s2["scored"] + s2["dead_letter"] and s2["accounted"]
    assert s2["dead_letter_by_reason"] == {"bad_column": 1, "inference_error": 1}
    dead = {r["id"]: r for r in scored.read_run(output, "n2", "dead_letter_files").to_pylist()}
    assert dead["c1"]["reason"] == "inference_error"
    assert "must match the existing size (40)" in dead["c1"]["detail"]  # the model's own exception
    assert dead["c1"]["raw"].startswith("this review is far too long")
    assert dead["c3"]["reason"] == "bad_column" and "'stars'" in dead["c3"]["detail"]
    # Beam metrics, read from the pipeline result, agree with the summary written by Finalize
    m = s2["beam_metrics"]
    assert m["rows_read"] == 4 and m["scored"] == 2 and m["dead_letter"] == 2
    assert m["dead_letter_inference_error"] == 1 and m["dead_letter_bad_column"] == 1
    assert m["batches_retried_row_by_row"] == 1
    assert m["batch_latency_ms"]["count"] >= 1 and m["batch_latency_ms"]["min"] >= 0
    assert s1["beam_metrics"]["scored"] == 5 and "dead_letter" not in s1["beam_metrics"]

    # night 3: a new Parquet file, and b.csv changed (same name, one more row)
    put("d.parquet", _parquet([{"id": "d0", "text": "solid", "product": "p-d", "stars": 3}]))
    put("b.csv", b"id,text,product,stars\nb0,dull and slow,p-b,2\nb1,loved it,p-b,5\n"
                 b"b2,a late addition,p-b,\n")  # fmt: skip
    s3 = _score([incoming], short_model_url, output, "n3", tmp_path, date="2026-12-03")
    assert sorted(f["file"].rsplit("/", 1)[1] for f in s3["files_in"]) == ["b.csv", "d.parquet"]
    assert s3["files_skipped"] == 2
    assert [c["previous_run_id"] for c in s3["files_changed"]] == ["n1"]
    assert s3["files_changed"][0]["url"].endswith("/b.csv")
    assert s3["scored"] == 4

    # rerunning night 3 (same run id) replaces it: the ledger of n3 does not count for n3
    s3b = _score([incoming], short_model_url, output, "n3", tmp_path, date="2026-12-03")
    assert s3b["scored"] == 4 and s3b["attempt"] != s3["attempt"]

    # the ledger: every (file, content) scored once with this model
    ledger = [e for rid in ("n1", "n2", "n3") for e in
              storage.read_manifest(scored.run_dir(output, rid))["ledger"]]  # fmt: skip
    names = sorted((e["url"].rsplit("/", 1)[1], e["run_id"]) for e in ledger)
    assert names == [("a.jsonl", "n1"), ("b.csv", "n1"), ("b.csv", "n3"), ("c.jsonl", "n2"),
                     ("d.parquet", "n3")]  # fmt: skip
    b1, b3 = (e for e in ledger if e["url"].endswith("b.csv"))
    assert b1["etag"] != b3["etag"] and b1["size"] < b3["size"]

    # the dataset: DuckDB and pyarrow.dataset read exactly the committed rows, once each
    committed = [r for rid in ("n1", "n2", "n3") for r in scored.read_run(output, rid).to_pylist()]
    assert len(committed) == 5 + 2 + 4
    for read in (_duckdb, _arrow_dataset):
        rows = read(output, "scored")
        assert sorted(map(_key, rows)) == sorted(map(_key, committed)), read.__name__
        by_key = {_key(r): r for r in rows}
        assert by_key[("a.jsonl", 2, "n1")]["stars"] == 3
        assert by_key[("b.csv", 1, "n1")]["product"] == "p-b"
        assert by_key[("b.csv", 2, "n3")]["stars"] is None  # empty CSV field
        assert by_key[("c.jsonl", 2, "n2")]["stars"] == 5  # 5.0 in JSON, int64 column
        assert {str(r["dt"]) for r in rows} == {"2026-12-01", "2026-12-02", "2026-12-03"}
        assert str(by_key[("d.parquet", 0, "n3")]["dt"]) == "2026-12-03"
        dead_rows = read(output, "dead_letter")
        assert sorted(r["id"] for r in dead_rows) == ["c1", "c3"]

    # --rescore: every file again, whatever the ledger says; an incremental night with nothing
    # new commits an empty run
    s4 = _score([incoming], short_model_url, output, "n4", tmp_path, date="2026-12-04")
    assert (s4["rows_in"], s4["files_skipped"], s4["accounted"]) == (0, 4, True)
    s5 = _score(
        [incoming], short_model_url, output, "n5", tmp_path, date="2026-12-05", rescore=True
    )
    assert len(s5["files_in"]) == 4 and s5["rows_in"] == 3 + 3 + 4 + 1


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_date_template_scores_that_days_folder(short_model_url, s3_server, tmp_path):
    base = f"s3://{s3_server.bucket}/bydate-{uuid.uuid4().hex[:8]}"
    for day in ("2026-12-01", "2026-12-02"):
        storage.write_bytes(
            f"{base}/in/dt={day}/r.jsonl", _jsonl([{"id": day, "text": f"seen on {day}"}])
        )
    summary = _score(
        [f"{base}/in/dt={{date}}/"], short_model_url, f"{base}/out", "d2", tmp_path,
        date="2026-12-02",
    )  # fmt: skip
    assert [f["file"] for f in summary["files_in"]] == [f"{base}/in/dt=2026-12-02/r.jsonl"]
    rows = _arrow_dataset(f"{base}/out", "scored")
    assert [(r["id"], r["dt"]) for r in rows] == [("2026-12-02", "2026-12-02")]
    with pytest.raises(ValueError, match="no --date"):
        _score([f"{base}/in/dt={{date}}/"], short_model_url, f"{base}/out", "x", tmp_path)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_model_that_raises_on_most_rows_is_not_committed(short_model_url, s3_server, tmp_path):
    base = f"s3://{s3_server.bucket}/broken-{uuid.uuid4().hex[:8]}"
    storage.write_bytes(
        f"{base}/in/r.jsonl",
        _jsonl(
            [{"id": "ok", "text": "fine"}] + [{"id": f"x{i}", "text": RAISES} for i in range(3)]
        ),
    )
    with pytest.raises(Exception, match="more than --max-inference-error-rate 0.5"):
        _score([f"{base}/in"], short_model_url, f"{base}/out", "r", tmp_path)
    assert not storage.exists(storage.join(scored.run_dir(f"{base}/out", "r"), "manifest.json"))
    assert not storage.exists(f"{base}/out/scored")


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_model_whose_files_do_not_match_its_manifest_is_refused_before_scoring(
    short_model_url, s3_server, tmp_path
):
    base = f"s3://{s3_server.bucket}/tampered-{uuid.uuid4().hex[:8]}"
    model = f"{base}/model"
    fs, src = storage.get_fs(short_model_url)
    for path in fs.find(src):
        storage.copy_file(f"s3://{path}", f"{model}/{path[len(src) + 1 :]}")
    cfg = json.loads(storage.read_bytes(f"{model}/config.json"))
    cfg["id2label"] = {"0": "positive", "1": "negative"}  # a silent label swap
    storage.write_bytes(f"{model}/config.json", json.dumps(cfg).encode())
    storage.write_bytes(f"{base}/in/r.jsonl", _jsonl([{"id": "r", "text": "fine"}]))
    with pytest.raises(ValueError, match=r"config.json: sha256 .* does not match the manifest"):
        _score([f"{base}/in"], model, f"{base}/out", "t", tmp_path)
    fs.invalidate_cache()
    # nothing scored or committed: the output holds only the lease this run took and released
    # before it looked at the model
    out = storage.get_fs(f"{base}/out")[1]
    assert [p.rsplit("/", 1)[1] for p in fs.find(out)] == ["_lease.json"]
    assert json.loads(storage.read_bytes(f"{base}/out/_lease.json"))["released"] is True
