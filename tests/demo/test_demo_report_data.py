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


def test_compare_models_scores_the_out_of_domain_set(
    tmp_path, monkeypatch, real_tokenizer_dir, tiny_teacher_dir, make_planted_reviews
):
    """The comparison's out-of-domain row is `distil eval`'s accuracy on every row of the set."""
    import json

    from bert_fixtures import tiny_classifier

    from distil.demo.report_data import compare_models
    from distil.quality.eval import evaluate_sentiment
    from distil.sentiment.classifier import export_classifier

    monkeypatch.setenv("DISTIL_HOME", str(tmp_path / "home"))
    clfs = {}
    for name, seed in (("teacher", 0), ("student", 1)):
        model, tok = tiny_classifier(real_tokenizer_dir, seed=seed)
        clfs[name] = str(tmp_path / name)
        export_classifier(model, tok, clfs[name], {"accuracy": 0.5 + seed / 10})
    rows = make_planted_reviews(30, seed=3)
    reviews = tmp_path / "amazon_snippets.jsonl"
    reviews.write_text("".join(json.dumps(r | {"split": "train"}) + "\n" for r in rows))
    out = compare_models(
        str(tiny_teacher_dir),
        str(tiny_teacher_dir),
        clfs["teacher"],
        clfs["student"],
        0.4,
        str(reviews),
        student_kl=0.25,
    )
    by = {r["metric"]: r for r in out["rows"]}
    ood = by["sentiment accuracy (amazon snippets, out of domain, 30 rows)"]
    want = evaluate_sentiment(clfs, {"s": str(reviews)}, "all", cache_dir=str(tmp_path / "c"))
    assert ood["teacher"] == want["teacher"]["s"]["accuracy"]
    assert ood["student"] == want["student"]["s"]["accuracy"]
    assert by["KL(teacher || student), held-out, top-k coarse"]["student"] == 0.25
    assert by["sentiment accuracy (movie snippets, validation)"]["student"] == 0.6
