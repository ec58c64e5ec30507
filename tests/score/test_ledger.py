"""The incremental plan of distil score (which files still need scoring), its date templates, and
the --keep-columns conversions, on local files (the S3 runs are in tests/pipelines)."""

from __future__ import annotations

import datetime as dt

import pytest

from distil.data.readers.review_files import convert_column
from distil.score import ledger
from distil.score.scored import parse_keep_columns


def test_dates_resolve_in_utc_and_fill_templates():
    now = dt.datetime(2026, 3, 1, 1, 30, tzinfo=dt.UTC)
    assert ledger.resolve_date("yesterday", now) == "2026-02-28"
    assert ledger.resolve_date("today", now) == "2026-03-01"
    assert ledger.resolve_date("2026-12-01") == "2026-12-01"
    assert ledger.resolve_date(None) is None
    with pytest.raises(ValueError, match="expected YYYY-MM-DD"):
        ledger.resolve_date("12/01/2026")
    assert ledger.fill_date(["s3://b/r/dt={date}/", "s3://b/x.jsonl"], "2026-12-01") == [
        "s3://b/r/dt=2026-12-01/",
        "s3://b/x.jsonl",
    ]
    with pytest.raises(ValueError, match="no --date"):
        ledger.fill_date(["s3://b/r/dt={date}/"], None)


def test_local_files_are_versioned_by_sha256(tmp_path):
    f = tmp_path / "a.jsonl"
    f.write_text('{"text": "x"}\n')
    v1 = ledger.file_version(str(f))
    assert v1["size"] == f.stat().st_size and len(v1["sha256"]) == 64 and "etag" not in v1
    f.write_text('{"text": "y"}\n')  # same size, other content
    v2 = ledger.file_version(str(f))
    assert v2["size"] == v1["size"] and not ledger.same_content(v1, v2)


def _manifest(run_id, entries):
    return {"run_id": run_id, "ledger": [{**e, "run_id": run_id} for e in entries]}


def test_plan_skips_what_another_run_scored_with_this_model_and_rescores_changes():
    a = {"url": "s3://b/a", "size": 3, "etag": "e1"}
    b = {"url": "s3://b/b", "size": 4, "etag": "e2"}
    b_new = {"url": "s3://b/b", "size": 5, "etag": "e3"}
    c = {"url": "s3://b/c", "size": 1, "etag": "e4"}
    runs = {
        "n1": _manifest("n1", [{**a, "model_fingerprint": "m"}, {**b, "model_fingerprint": "m"}]),
        "n2": _manifest("n2", [{**c, "model_fingerprint": "other-model"}]),
        "n3": _manifest("n3", [{**c, "model_fingerprint": "m"}]),
    }
    todo, skipped, changed = ledger.plan([a, b_new, c], runs, "n4", "m")
    assert todo == [b_new]
    assert [(s["url"], s["scored_by"]) for s in skipped] == [("s3://b/a", "n1"), ("s3://b/c", "n3")]
    assert [(c["url"], c["previous"]["run_id"]) for c in changed] == [("s3://b/b", "n1")]
    # another model: everything; a rerun of n3 does not skip what n3 itself scored
    assert ledger.plan([a, b_new, c], runs, "n4", "new-model")[0] == [a, b_new, c]
    assert ledger.plan([c], runs, "n3", "m")[0] == [c]


def test_keep_columns_parse_and_convert():
    assert parse_keep_columns(["product", "stars:int64", "ok:bool"]) == [
        ("product", "string"),
        ("stars", "int64"),
        ("ok", "bool"),
    ]
    for bad, msg in ((["stars:decimal"], "expected name"), (["score"], "already have"),
                     (["dt"], "already have"), (["a", "a:int64"], "twice")):  # fmt: skip
        with pytest.raises(ValueError, match=msg):
            parse_keep_columns(bad)
    assert convert_column(" 4 ", "int64") == 4 and convert_column(5.0, "int64") == 5
    assert convert_column("", "int64") is None and convert_column(None, "string") is None
    assert convert_column(4, "string") == "4" and convert_column({"a": 1}, "string") == '{"a": 1}'
    assert convert_column("TRUE", "bool") is True and convert_column("2.5", "float64") == 2.5
    for value, typ in (("4.5", "int64"), (True, "int64"), ("yes", "bool"), ([1], "float64")):
        with pytest.raises(ValueError):
            convert_column(value, typ)


def test_tries_of_a_file_that_could_not_be_read_count_on_until_its_content_changes():
    bad = {"url": "s3://b/bad.gz", "size": 9, "etag": "e1"}
    fixed = {**bad, "size": 12, "etag": "e2"}
    fail = lambda rid, tries, when, fp="m": {  # noqa: E731
        **bad, "model_fingerprint": fp, "run_id": rid, "tries": tries, "scored_at": when
    }  # fmt: skip
    runs = {
        "n1": {"run_id": "n1", "ledger": [], "failed_files": [fail("n1", 1, "2026-12-01")]},
        "n2": {"run_id": "n2", "ledger": [], "failed_files": [fail("n2", 2, "2026-12-02")]},
        "x": {"run_id": "x", "ledger": [], "failed_files": [fail("x", 7, "2026-12-03", "old")]},
    }
    # a failed file is not in any ledger: planned again
    assert ledger.plan([bad], runs, "n3", "m")[0] == [bad]
    assert ledger.previous_tries([bad], runs, "n3", "m") == {"s3://b/bad.gz": 2}
    assert ledger.previous_tries([bad], runs, "n2", "m") == {"s3://b/bad.gz": 1}  # a rerun of n2
    assert ledger.previous_tries([fixed], runs, "n3", "m") == {}  # new content: from zero
    assert ledger.previous_tries([bad], runs, "n3", "new-model") == {}
