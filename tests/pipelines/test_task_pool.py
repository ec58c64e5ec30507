"""``distil pool``: the pool built from the fine-tune's own training rows, labelled by the teacher
with the real Beam scoring pipeline into a task teacher cache a student fine-tune reads."""

from __future__ import annotations

import json

import numpy as np
import pytest
from bert_fixtures import tiny_classifier

from distil import storage
from distil.samples.reviews import text_key
from distil.sentiment.classifier import SequenceClassifier, export_classifier
from distil.sentiment.config import FinetuneConfig, PoolConfig
from distil.sentiment.labelled_data import assemble, load_texts
from distil.sentiment.teacher_cache import open_teacher_cache, teacher_targets

ID2LABEL = {0: "negative", 1: "positive"}


@pytest.fixture(scope="module")
def task(tmp_path_factory, real_tokenizer_dir, make_planted_reviews):
    """Labelled reviews, an evaluation set sharing two of their texts (spelled otherwise), a
    teacher classifier, and one `distil pool` run over them."""
    from distil.pipelines.task_pool import run

    d = tmp_path_factory.mktemp("task")
    rows = make_planted_reviews(120, seed=3)
    (d / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    held = [{"text": rows[0]["text"].upper() + "!"}, {"text": rows[1]["text"] + " ..."}]
    (d / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in held))
    model, tok = tiny_classifier(real_tokenizer_dir)
    teacher = str(d / "teacher")
    export_classifier(model, tok, teacher, {"note": "random weights"})
    cfg = PoolConfig(
        train=str(d / "train.jsonl"),
        exclude=[str(d / "eval.jsonl")],
        teacher=teacher,
        output=str(d / "task"),
        multiple=2,
        methods=["synonym", "delete"],
        validation_fraction=0.2,
        torch_threads=1,
    )
    return {"cfg": cfg, "summary": run(cfg), "dir": d, "teacher": teacher}


@pytest.mark.timeout(600)
def test_pool_is_made_of_training_rows_and_kept_out_of_evaluation_and_validation(task):
    cfg, summary = task["cfg"], task["summary"]
    data = assemble(cfg, cfg.train)  # the rows a fine-tune with these settings trains on
    assert data.accounting["dropped"]["in_evaluation_set"] == 2
    pool_rows, _ = load_texts([summary["pool"]], "text")  # a pool dir reads as its parts
    assert len(pool_rows) == summary["pool_rows"] > len(data.train)
    counts = summary["counts"]
    assert counts["generated"] == 2 * len(data.train)
    assert (
        counts["kept"] + counts["forbidden"] + counts["same_as_training_text"] + counts["repeated"]
        == counts["generated"]
    )
    pool_keys = {text_key(r["text"]) for r in pool_rows}
    evaluation = {text_key(r["text"]) for r in load_texts(list(cfg.exclude), "text")[0]}
    validation = {text_key(r["text"]) for r in data.val}
    training = {text_key(r["text"]) for r in data.train}
    assert not pool_keys & evaluation and not pool_keys & validation
    assert not training & evaluation and not pool_keys & training
    origins = {r["id"] for r in data.train}
    manifest = storage.read_manifest(summary["pool"])
    part = storage.join(summary["pool"], manifest["files"][1]["name"])
    assert {json.loads(line)["origin"] for line in storage.read_bytes(part).splitlines()} <= origins


@pytest.mark.timeout(600)
def test_teacher_cache_holds_the_teachers_answer_for_every_training_and_pool_text(task):
    cfg, summary = task["cfg"], task["summary"]
    data = assemble(cfg, cfg.train)
    pool_rows, _ = load_texts([summary["pool"]], "text")
    texts = [r["text"] for r in data.train + pool_rows]
    logits, covered = teacher_targets(summary["teacher_cache"], texts, ID2LABEL)
    assert covered.all()
    manifest = open_teacher_cache(summary["teacher_cache"])
    assert manifest["pool_fingerprint"] == storage.read_manifest(summary["pool"])["fingerprint"]
    # the cached log-probabilities give the teacher's own probabilities, computed independently
    probs = SequenceClassifier(task["teacher"], max_length=cfg.max_length).classify(texts[:50])
    cached = np.exp(logits[:50])
    np.testing.assert_allclose(cached / cached.sum(1, keepdims=True), probs["probs"], atol=1e-5)


@pytest.mark.timeout(600)
def test_a_rerun_reuses_pool_and_labels_without_a_teacher_pass(task, monkeypatch):
    from distil.pipelines import score_reviews, task_pool

    def no_scoring(*a, **k):
        raise AssertionError("the teacher labelled the pool again")

    monkeypatch.setattr(score_reviews, "run", no_scoring)
    again = task_pool.run(task["cfg"])
    assert (again["pool"], again["teacher_cache"]) == (
        task["summary"]["pool"],
        task["summary"]["teacher_cache"],
    )


@pytest.mark.timeout(600)
def test_a_student_fine_tunes_on_the_pool(task, tiny_base_dir):
    from distil.sentiment.finetune import run_local

    cfg, summary = task["cfg"], task["summary"]
    out = run_local(
        FinetuneConfig(
            model=str(tiny_base_dir),
            train=cfg.train,
            exclude=list(cfg.exclude),
            validation_fraction=cfg.validation_fraction,
            output=str(task["dir"] / "student"),
            run_name="s",
            pool=[summary["pool"]],
            teacher_cache=summary["teacher_cache"],
            max_steps=3,
            batch_size=8,
            max_length=32,
        )
    )
    metrics = json.loads(storage.read_bytes(storage.join(out["model_url"], "metrics.json")))
    assert metrics["pool_examples"] == summary["pool_rows"]
    assert metrics["data"]["teacher_covered"]["train"] == metrics["train_examples"]


def test_prose_records_no_reader_could_read_are_counted_in_the_pool_manifest(tmp_path):
    from distil.pipelines.task_pool import build

    prose = tmp_path / "prose.jsonl"
    good = "The film was long. It had a quiet and careful second half that most people liked."
    prose.write_text(json.dumps({"text": good}) + "\n" + "{not json\n")
    train = [{"id": str(i), "text": f"review number {i} was fine", "label": 1} for i in range(4)]
    cfg = PoolConfig(
        train=str(tmp_path / "unused.jsonl"),
        teacher="unused",
        output=str(tmp_path / "task"),
        methods=["delete"],
        multiple=1,
        prose=[str(prose)],
        prose_rows=2,
    )
    url = build(cfg, train, set(), "encoder-sha")
    counts = storage.read_manifest(url)["counts"]
    assert sum(counts["prose_dead_letters"].values()) == 1
    from distil.sentiment.pool import pool_files

    prose_rows = [
        json.loads(line)
        for part in pool_files(url)
        for line in storage.read_bytes(part).splitlines()
    ]
    assert any(r["method"] == "prose" for r in prose_rows)
