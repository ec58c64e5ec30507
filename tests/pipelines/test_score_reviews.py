"""distil score end to end: real Beam (FnApiRunner), real SeaweedFS S3, a tiny real classifier."""

from __future__ import annotations

import gzip
import io
import json
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from score_fixtures import run_score

from distil import storage
from distil.data.readers.review_files import generated_id, text_sha256
from distil.score import scored

LONG_TEXT = "a long and winding review " * 150  # ~750 tokens: truncated to max_length
GOOD = {
    # (file, row) -> (id or None, text) for every row that must be scored
    ("a.jsonl", 0): ("good-1", "a wonderful, moving film"),
    ("a.jsonl", 11): (None, "no id here but a fine film"),
    ("a.jsonl", 12): ("long", LONG_TEXT),
    ("a.jsonl", 13): ("dup", "a wonderful, moving film"),
    ("b.csv", 0): ("c1", "terrible, boring"),
    ("b.csv", 4): ("c5", 'Quoted "text", with a comma'),
    ("c.parquet", 0): ("p1", "solid acting"),
    ("c.parquet", 3): ("p4", "I walked out after ten minutes"),
    ("e.jsonl.gz", 0): ("g1", "gzip keeps working"),
    ("e.jsonl.gz", 1): ("g2", "clichés and all, it works"),
}
# (file, row) -> reason for every planted bad record
BAD = {
    ("a.jsonl", 1): "missing_text",
    ("a.jsonl", 2): "missing_text",
    ("a.jsonl", 3): "empty_text",
    ("a.jsonl", 4): "wrong_type",
    ("a.jsonl", 5): "wrong_type",
    ("a.jsonl", 6): "malformed_line",
    ("a.jsonl", 7): "malformed_line",
    ("a.jsonl", 8): "undecodable",
    ("a.jsonl", 9): "undecodable",
    ("a.jsonl", 10): "bad_id",
    ("b.csv", 1): "malformed_row",
    ("b.csv", 2): "undecodable",
    ("b.csv", 3): "empty_text",
    ("c.parquet", 1): "missing_text",
    ("c.parquet", 2): "empty_text",
    ("d.parquet", -1): "unreadable_file",
}


def _jsonl() -> bytes:
    lines = [
        json.dumps({"id": "good-1", "text": "a wonderful, moving film"}).encode(),
        b'{"id": "m1"}',
        b'{"id": "m2", "text": null}',
        b'{"id": "e1", "text": "   \\t "}',
        b'{"id": "w1", "text": 42}',
        b'{"id": "w2", "text": ["a", "list"]}',
        b'{"id": "broken", "text": "no closing brace"',
        b"[1, 2, 3]",
        b'{"id": "u1", "text": "caf\xe9 latin-1 byte"}',
        b'{"id": "u2", "text": "lone \\ud800 surrogate"}',
        b'{"id": {"nested": 1}, "text": "fine text, bad id"}',
        b"",  # blank lines are not records
        json.dumps({"text": "no id here but a fine film"}).encode(),
        json.dumps({"id": "long", "text": LONG_TEXT}).encode(),
        json.dumps({"id": "dup", "text": "a wonderful, moving film"}).encode(),
    ]
    return b"\n".join(lines) + b"\n"


def _csv() -> bytes:
    return (
        b"id,text\r\n"
        b'c1,"terrible, boring"\r\n'
        b"c2,too,many,fields\r\n"
        b"c3,\xff\xfe not utf-8\r\n"
        b"c4,\r\n"
        b'c5,"Quoted ""text"", with a comma"\r\n'
    )


def _parquet() -> bytes:
    t = pa.table(
        {
            "id": ["p1", "p2", "p3", "p4"],
            "text": ["solid acting", None, "", "I walked out after ten minutes"],
            "stars": [4, 1, 3, 1],
        }
    )
    buf = io.BytesIO()
    pq.write_table(t, buf)
    return buf.getvalue()


def _gz() -> bytes:
    rows = [
        {"id": "g1", "text": "gzip keeps working"},
        {"id": "g2", "text": "clichés and all, it works"},
    ]
    return gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode())


@pytest.fixture(scope="module")
def reviews_url(s3_server):
    url = f"s3://{s3_server.bucket}/reviews-{uuid.uuid4().hex[:8]}"
    files = {
        "a.jsonl": _jsonl(),
        "b.csv": _csv(),
        "c.parquet": _parquet(),
        "d.parquet": b"PAR1 this is not a parquet file",
        "e.jsonl.gz": _gz(),
    }
    for name, data in files.items():
        storage.write_bytes(storage.join(url, name), data)
    return url


def _score(reviews_url, model_url, output, run_id, tmp_path, **kw) -> dict:
    return run_score(reviews_url, model_url, output, run_id, tmp_path, max_length=128,
                     batch_size=8, micro_batch_size=4, rows_per_file=4,
                     # d.parquet cannot be read at all: the run commits without it
                     **{"allow_file_errors": True, **kw})  # fmt: skip


@pytest.fixture(scope="module")
def base_run(reviews_url, tiny_classifier_url, s3_server, tmp_path_factory):
    output = f"s3://{s3_server.bucket}/scored-{uuid.uuid4().hex[:8]}"
    tmp = tmp_path_factory.mktemp("score")
    summary = _score(reviews_url, tiny_classifier_url, output, "base", tmp)
    return output, summary, tmp


def _expected_id(reviews_url, key):
    rid, _ = GOOD[key]
    return rid if rid is not None else generated_id(storage.join(reviews_url, key[0]), key[1])


@pytest.mark.timeout(180)
def test_every_row_is_scored_or_dead_lettered_with_its_reason(base_run, reviews_url):
    output, summary, _ = base_run
    assert summary["rows_in"] == len(GOOD) + len(BAD) == 26
    assert summary["scored"] == len(GOOD)
    assert summary["dead_letter"] == len(BAD)
    assert summary["accounted"] is True
    want_reasons: dict[str, int] = {}
    for reason in BAD.values():
        want_reasons[reason] = want_reasons.get(reason, 0) + 1
    assert summary["dead_letter_by_reason"] == want_reasons
    assert len(want_reasons) >= 6
    # the one file that could not be read at all is not marked scored: the next run retries it
    failed = storage.join(reviews_url, "d.parquet")
    assert [(f["file"], f["tries"]) for f in summary["files_failed"]] == [(failed, 1)]
    assert "ArrowInvalid" in summary["files_failed"][0]["error"]
    ledger = storage.read_manifest(scored.run_dir(output, "base"))["ledger"]
    assert sorted(e["url"].rsplit("/", 1)[1] for e in ledger) == [
        "a.jsonl", "b.csv", "c.parquet", "e.jsonl.gz"
    ]  # fmt: skip

    dead = scored.read_run(output, "base", "dead_letter_files").to_pylist()
    got = {(r["source_file"].rsplit("/", 1)[1], r["source_row"]): r["reason"] for r in dead}
    assert got == BAD
    assert all(r["detail"] and r["run_id"] == "base" for r in dead)

    rows = scored.read_run(output, "base").to_pylist()
    by_key = {(r["source_file"].rsplit("/", 1)[1], r["source_row"]): r for r in rows}
    assert set(by_key) == set(GOOD)
    for key, (_, text) in GOOD.items():
        r = by_key[key]
        assert r["id"] == _expected_id(reviews_url, key)
        assert r["id_generated"] == (GOOD[key][0] is None)
        assert r["text_sha256"] == text_sha256(text)
        assert r["label"] in ("negative", "positive")
        assert r["score"] == pytest.approx(max(r["probs"]), abs=1e-6)
        assert r["run_id"] == "base" and r["model_fingerprint"] == summary["model_fingerprint"]
    long = by_key[("a.jsonl", 12)]
    assert long["truncated"] and long["n_tokens"] == 128
    assert summary["truncated"] == 1
    # rows_per_file=4: the output really is split into several parts
    assert len(storage.read_manifest(scored.run_dir(output, "base"))["files"]) >= 3


@pytest.mark.timeout(180)
def test_beam_scores_equal_transformers_pipeline(base_run, reviews_url, tiny_classifier_url):
    from transformers import pipeline

    from distil.sentiment.classifier import fetch_model

    output, _, tmp = base_run
    local_dir, _ = fetch_model(tiny_classifier_url, str(tmp / "reference"))
    clf = pipeline("text-classification", model=local_dir, top_k=None, device="cpu")
    rows = {
        (r["source_file"].rsplit("/", 1)[1], r["source_row"]): r
        for r in scored.read_run(output, "base").to_pylist()
    }
    keys = sorted(GOOD)
    ref = clf([GOOD[k][1] for k in keys], truncation=True, max_length=128)
    labels = set()
    for key, scores in zip(keys, ref, strict=True):
        want = [
            next(s["score"] for s in scores if s["label"] == name)
            for name in ("negative", "positive")
        ]
        np.testing.assert_allclose(rows[key]["probs"], want, atol=1e-4)
        assert rows[key]["label"] == max(scores, key=lambda s: s["score"])["label"]
        labels.add(rows[key]["label"])
    assert labels == {"negative", "positive"}  # the check covers both classes


@pytest.mark.timeout(240)
def test_rerunning_a_run_id_leaves_one_copy_of_each_row(
    reviews_url, tiny_classifier_url, s3_server, tmp_path
):
    output = f"s3://{s3_server.bucket}/rerun-{uuid.uuid4().hex[:8]}"
    first = _score(reviews_url, tiny_classifier_url, output, "nightly", tmp_path)
    second = _score(reviews_url, tiny_classifier_url, output, "nightly", tmp_path)
    assert first["attempt"] != second["attempt"]
    table = scored.read_run(output, "nightly")
    ids = table.column("id").to_pylist()
    assert len(ids) == len(set(ids)) == second["scored"] == len(GOOD)
    dead = scored.read_run(output, "nightly", "dead_letter_files")
    assert dead.num_rows == len(BAD)
    # both attempts' parts are gone from the run folder, not merely hidden (SeaweedFS may keep
    # the empty folder, so look at the files): the committed rows live in the dataset
    fs, path = storage.get_fs(scored.run_dir(output, "nightly"))
    fs.invalidate_cache()
    left = {p[len(path) + 1 :].split("/", 1)[0] for p in fs.find(path)}
    assert left == {"manifest.json", "summary.json"}
    _, out_path = storage.get_fs(output)
    published = {p[len(out_path) + 1 :] for p in fs.find(out_path) if p.endswith(".parquet")}
    manifest = storage.read_manifest(scored.run_dir(output, "nightly"))
    listed = {
        e["name"].removeprefix("../") for k in scored.DATASETS for e in manifest[k]
    }  # fmt: skip
    assert published == listed and all(
        n.startswith(("scored/dt=", "dead_letter/dt=")) for n in listed
    )


@pytest.mark.timeout(240)
def test_teacher_agreement_matches_independent_computation(
    base_run, reviews_url, tiny_classifier_url, s3_server, tmp_path
):
    import pandas as pd
    import torch

    from distil.sentiment.teacher_cache import write_teacher_cache

    texts = sorted({t for _, t in GOOD.values()})[:6] + ["a text that no input row has"]
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 2, size=(len(texts), 2)).astype(np.float32)
    cache_url = f"s3://{s3_server.bucket}/teacher-{uuid.uuid4().hex[:8]}"
    write_teacher_cache(cache_url, texts, logits, {0: "negative", 1: "positive"})

    output = f"s3://{s3_server.bucket}/agree-{uuid.uuid4().hex[:8]}"
    summary = _score(
        reviews_url, tiny_classifier_url, output, "drift", tmp_path, teacher_cache=cache_url
    )
    agreement = summary["teacher_agreement"]

    # Independently: the Parquet files as they lie on S3, joined with pandas, KL with torch.
    def read(url):
        fs, path = storage.arrow_filesystem(url)
        return pq.read_table(path, filesystem=fs).to_pandas()

    run_url = scored.run_dir(output, "drift")
    out = pd.concat(read(u) for u in storage.committed_files(run_url))
    cache = pd.concat(read(u) for u in storage.committed_files(cache_url))
    joined = out.merge(cache, on="text_sha256", how="inner")
    # 6 cached texts cover 7 rows: the duplicated review counts twice
    assert len(joined) == agreement["covered_rows"] == 7
    student = np.stack(joined["probs"].to_numpy()).astype(np.float64)
    teacher = torch.tensor(np.stack(joined["logits"].to_numpy()), dtype=torch.float64)
    agree = float((student.argmax(1) == teacher.argmax(1).numpy()).mean())
    kl = torch.nn.functional.kl_div(
        torch.log(torch.tensor(student)),
        torch.log_softmax(teacher, 1),
        log_target=True,
        reduction="batchmean",
    ).item()
    assert agreement["label_agreement"] == pytest.approx(agree, abs=1e-12)
    assert agreement["mean_kl"] == pytest.approx(kl, rel=1e-6, abs=1e-9)
    assert 0 < agreement["label_agreement"] < 1 or agreement["mean_kl"] > 0


def test_unknown_flags_pass_through_to_beam():
    from distil.pipelines.score_reviews import _pipeline_args, parse_args

    cfg = parse_args(
        [
            "--input",
            "s3://b/in/",
            "--model",
            "s3://b/m/latest.json",
            "--output",
            "s3://b/out",
            "--runner",
            "FlinkRunner",
            "--flink_master=jm:8081",
            "--environment_type=LOOPBACK",
        ]
    )
    assert cfg.runner == "FlinkRunner"
    assert _pipeline_args(cfg) == [
        "--runner=FlinkRunner",
        "--flink_master=jm:8081",
        "--environment_type=LOOPBACK",
    ]


def _poison_inputs(folder) -> dict[str, int]:
    """Files that used to stop a run or lose rows; returns file name -> records in it."""
    import lzma

    import zstandard

    rows = lambda prefix: "".join(  # noqa: E731
        json.dumps({"id": f"{prefix}{i}", "text": f"review {i} from {prefix}"}) + "\n"
        for i in range(5)
    ).encode()
    zstd = zstandard.ZstdCompressor()
    files = {
        "a.jsonl.zst": zstd.compress(rows("z")),
        "b.jsonl.xz": lzma.compress(rows("x")),
        "c.csv.zst": zstd.compress(b"id,text\nc0,csv in zstd\nc1,another\nc2,and a third\n"),
        # 7 rows; the second opens a quote it never closes
        "d.csv": b'id,text\nd0,fine\nd1,"never closed\nd2,after it\nd3,"quoted, ok"\n'
        b"d4,more\nd5,still more\nd6,last\n",
        "e.jsonl": "\n".join(
            [
                '{"id": "deep", "text": "t", "x": ' + "[" * 100_000 + "]" * 100_000 + "}",
                '{"id": "sur\\ud800", "text": "a lone surrogate in the id"}',
                '{"id": "big", "text": "an overflow", "stars": 99999999999999999999999}',
                '{"id": "e-ok", "text": "a fine row", "stars": 3}',
            ]
        ).encode()
        + b"\n",
        b"f-caf\xe9.jsonl".decode(
            "utf-8", "surrogateescape"
        ): b'{"id": "f0", "text": "odd name"}\n',
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return {"a.jsonl.zst": 5, "b.jsonl.xz": 5, "c.csv.zst": 3, "d.csv": 7, "e.jsonl": 4,
            "f-caf\\xe9.jsonl": 1}  # fmt: skip


@pytest.mark.timeout(240)
def test_compressed_files_an_unclosed_quote_and_poison_rows_end_in_exit_0(
    tiny_classifier_url, s3_server, tmp_path
):
    from distil.cli import main

    folder = tmp_path / "in"
    folder.mkdir()
    records = _poison_inputs(folder)
    output = f"s3://{s3_server.bucket}/poison-{uuid.uuid4().hex[:8]}"
    argv = ["score", "--input", str(folder), "--model", tiny_classifier_url, "--output", output,
            "--run-id", "p", "--model-cache", str(tmp_path / "cache"), "--max-length", "64",
            "--keep-columns", "stars:int64", "--runner", "FnApiRunner"]  # fmt: skip
    assert main(argv) == 0
    summary = storage.read_json(storage.join(scored.run_dir(output, "p"), scored.SUMMARY))
    got = {f["file"].rsplit("/", 1)[1]: f["records"] for f in summary["files_in"]}
    assert got == records and summary["files_failed"] == []
    assert summary["rows_in"] == sum(records.values()) == summary["scored"] + summary["dead_letter"]
    assert summary["dead_letter_by_reason"] == {
        "unclosed_quote": 1, "malformed_line": 1, "bad_id": 1, "bad_column": 1
    }  # fmt: skip
    dead = {r["reason"]: r for r in scored.read_run(output, "p", "dead_letter_files").to_pylist()}
    assert (
        dead["unclosed_quote"]["source_row"] == 1 and "bytes [" in dead["unclosed_quote"]["detail"]
    )
    assert "nested too deeply" in dead["malformed_line"]["detail"]
    assert dead["bad_id"]["id"] == "sur\\ud800" and "int64 range" in dead["bad_column"]["detail"]
    rows = scored.read_run(output, "p").to_pylist()
    ids = {r["id"] for r in rows}
    assert {f"z{i}" for i in range(5)} | {f"x{i}" for i in range(5)} <= ids
    assert {"c0", "c1", "c2", "d0", "d2", "d3", "d4", "d5", "d6", "e-ok", "f0"} <= ids
    assert next(r for r in rows if r["id"] == "d2")["source_row"] == 2  # not merged into d1
    assert next(r for r in rows if r["id"] == "f0")["source_file"] == f"{folder}/f-caf\\xe9.jsonl"


@pytest.mark.timeout(240)
def test_a_file_that_failed_as_a_whole_is_retried_and_fails_the_run_unless_allowed(
    tiny_classifier_url, s3_server, tmp_path
):
    from distil.pipelines.score_reviews import FileErrors

    base = f"s3://{s3_server.bucket}/failed-{uuid.uuid4().hex[:8]}"
    inp, output = f"{base}/in", f"{base}/out"
    storage.write_bytes(f"{inp}/good.jsonl", b'{"id": "g", "text": "fine"}\n')
    storage.write_bytes(f"{inp}/bad.jsonl.gz", b'{"id": "b", "text": "not gzip"}\n')
    first = _score(inp, tiny_classifier_url, output, "n1", tmp_path, incremental=True)
    assert [(f["file"], f["tries"]) for f in first["files_failed"]] == [(f"{inp}/bad.jsonl.gz", 1)]
    assert "is named .gz but is not gzip data" in first["files_failed"][0]["error"]
    # without --allow-file-errors: the run commits what it could and then fails
    with pytest.raises(FileErrors, match=r"could not be read at all: .*bad.jsonl.gz \(try 2\)"):
        _score(inp, tiny_classifier_url, output, "n2", tmp_path, incremental=True,
               allow_file_errors=False)  # fmt: skip
    manifest = storage.read_manifest(scored.run_dir(output, "n2"))
    assert manifest["ledger"] == [] and [f["tries"] for f in manifest["failed_files"]] == [2]
    # the file is fixed: the next incremental run scores it, and only it
    storage.write_bytes(f"{inp}/bad.jsonl.gz", gzip.compress(b'{"id": "b", "text": "now ok"}\n'))
    third = _score(inp, tiny_classifier_url, output, "n3", tmp_path, incremental=True)
    assert (third["scored"], third["files_failed"], third["files_skipped"]) == (1, [], 1)
