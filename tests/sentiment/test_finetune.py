"""The fine-tuning recipe without Ray (world size 1): data, split, schedule, KD, export.

The KD formula itself is tested in tests/test_losses.py (``kd_dense``)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from distil import storage
from distil.sentiment.config import FinetuneConfig
from distil.sentiment.finetune import FinetuneRecipe, run_local
from distil.sentiment.finetune_export import classification_metrics
from distil.sentiment.labelled_data import load_labelled
from distil.sentiment.teacher_cache import write_teacher_cache


def test_metrics():
    m = classification_metrics(np.array([1, 1, 0, 0]), np.array([1, 0, 0, 0]), 2)
    assert m["accuracy"] == 0.75
    assert m["f1"] == pytest.approx(2 / 3)  # positive class: tp 1, fp 1, fn 0
    assert m["f1_macro"] == pytest.approx((2 / 3 + 0.8) / 2)
    # gold 0 predicted 1 once: confusion[gold][pred]
    assert m["confusion"] == [[2, 1], [0, 1]]
    assert m["precision_per_class"] == pytest.approx([1.0, 0.5])
    assert m["recall_per_class"] == pytest.approx([2 / 3, 1.0])
    assert m["precision_macro"] == pytest.approx(0.75)
    assert m["recall_macro"] == pytest.approx((2 / 3 + 1) / 2)
    assert m["balanced_accuracy"] == pytest.approx(m["recall_macro"])
    assert m["accuracy_se"] == pytest.approx((0.75 * 0.25 / 4) ** 0.5)


def test_metrics_of_a_skewed_set_tell_balanced_accuracy_from_accuracy():
    # 9 positives, 1 negative, a model that always says positive: accurate, not balanced
    m = classification_metrics(np.ones(10, int), np.array([0] + [1] * 9), 2)
    assert m["accuracy"] == pytest.approx(0.9)
    assert m["balanced_accuracy"] == pytest.approx(0.5)
    assert m["recall_per_class"] == [0.0, 1.0]
    assert m["precision_per_class"][0] == 0.0  # never predicted: no division by zero


@pytest.mark.timeout(300)
def test_lr_warms_up_from_zero_and_decays_to_zero_at_the_last_step(
    tiny_base_dir, tmp_path, make_planted_reviews
):
    rows = make_planted_reviews(80)
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = FinetuneConfig(
        model=str(tiny_base_dir),
        train=str(tmp_path / "train.jsonl"),
        output=str(tmp_path / "models"),
        max_steps=4,
        warmup_fraction=0.5,  # 2 warm-up steps
        batch_size=8,
        max_length=16,
        log_every=1,
        lr=1e-3,
    )
    recipe = FinetuneRecipe(cfg)
    recipe.setup()
    assert (recipe.total_steps, recipe.warmup) == (4, 2)
    assert recipe.optim.optimizer.param_groups[0]["lr"] == 0.0  # the first step's LR
    recipe.train()
    # each record holds the LR for the step after it: peak after the warm-up, 0 after the last
    lrs = [rec["lr"] for rec in recipe.history]
    assert lrs == pytest.approx([5e-4, 1e-3, 5e-4, 0.0])


def test_load_labelled_accounts_for_unusable_rows(tmp_path):
    (tmp_path / "r.csv").write_text(
        "id,text,label\n1,good film,positive\n2,bad film,0\n3,,1\n4,meh,neutral\n5,fine,1\n"
    )
    rows, acc = load_labelled(
        str(tmp_path / "r.csv"), "text", "label", "id", ["negative", "positive"]
    )
    assert [(r["id"], r["label"]) for r in rows] == [("1", 1), ("2", 0), ("5", 1)]
    assert acc == {
        "rows_in": 5,
        "used": 3,
        "dropped": {"missing_or_empty_text": 1, "unknown_label": 1},
    }


@pytest.mark.timeout(300)
def test_finetune_on_movie_snippets_reports_validation_metrics(tiny_base_dir, tmp_path):
    from transformers import pipeline

    from distil.samples.reviews import MOVIE_SNIPPETS, assemble_reviews

    assemble_reviews(str(tmp_path / "reviews"))  # what `distil data samples` does for reviews/
    cfg = FinetuneConfig(
        model=str(tiny_base_dir),
        train=str(tmp_path / "reviews" / MOVIE_SNIPPETS),
        output=str(tmp_path / "models"),
        run_name="tiny",
        max_train_examples=96,
        max_validation_examples=64,
        max_steps=3,
        batch_size=16,
        max_length=48,
    )
    out = run_local(cfg)
    model_dir = tmp_path / "models" / "tiny"
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["validation_examples"] == 64 and metrics["train_examples"] == 96
    assert 0.0 <= metrics["accuracy"] <= 1.0 and 0.0 <= metrics["f1"] <= 1.0
    assert metrics["validation"]["examples"] == 64
    # the validation sample is not one class (the source file is sorted by label)
    assert metrics["validation"]["f1_per_class"][0] + metrics["validation"]["f1_per_class"][1] > 0
    assert out["metrics"]["accuracy"] == metrics["accuracy"]
    pointer = storage.read_json(str(tmp_path / "models" / "latest.json"))
    assert pointer["model"] == str(model_dir) and pointer["fingerprint"] == out["fingerprint"]
    clf = pipeline("text-classification", model=str(model_dir), device="cpu")
    assert clf("a wonderful film")[0]["label"] in ("negative", "positive")


@pytest.mark.slow  # trains two students for real (~25 s on 2 cores)
@pytest.mark.timeout(300)
def test_kd_term_pulls_the_student_towards_the_teacher(
    tiny_base_dir, tmp_path, make_planted_reviews
):
    """A teacher that says the opposite of every label, at kd_alpha=1: the student must learn
    the teacher, so its accuracy against the true labels collapses. Without KD it learns them."""
    rows = make_planted_reviews(400)
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    flipped = np.array([[4.0, -4.0] if r["label"] else [-4.0, 4.0] for r in rows], np.float32)
    cache = str(tmp_path / "teacher")
    write_teacher_cache(cache, [r["text"] for r in rows], flipped, {0: "negative", 1: "positive"})
    common = dict(
        model=str(tiny_base_dir),
        train=str(tmp_path / "train.jsonl"),
        output=str(tmp_path / "models"),
        epochs=3,
        batch_size=16,
        lr=1e-2,
        max_length=16,
        validation_fraction=0.2,
    )
    plain = run_local(FinetuneConfig(run_name="plain", **common))
    kd = run_local(
        FinetuneConfig(
            run_name="kd", teacher_cache=cache, kd_alpha=1.0, kd_temperature=1.0, **common
        )
    )
    assert plain["metrics"]["accuracy"] >= 0.9
    assert kd["metrics"]["accuracy"] <= 0.1


def test_fine_tunes_of_one_name_under_two_outputs_keep_separate_ray_runs():
    """The demo fine-tunes a teacher and a student classifier, both `--run-name model`, into
    different outputs with one Ray storage: the student must not resume the teacher's checkpoint."""
    from distil.jobs.finetune import run_name_of

    teacher, student = "s3://b/run/finetune_teacher-1/model", "s3://b/run/finetune_student-2/model"
    assert run_name_of(teacher) != run_name_of(student)
    assert run_name_of(teacher) == run_name_of(teacher + "/")
    assert run_name_of(teacher).startswith("model-")


def _write(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.mark.timeout(300)
def test_evaluations_during_training_keep_the_best_weights_and_stop_early(
    tiny_base_dir, tmp_path, make_planted_reviews
):
    """lr 0: the weights never change, so no evaluation beats the first one and patience 2 stops
    the run at the third evaluation; the export holds the first evaluation's weights."""
    train = _write(tmp_path / "train.jsonl", make_planted_reviews(80))
    cfg = FinetuneConfig(
        model=str(tiny_base_dir),
        train=train,
        output=str(tmp_path / "models"),
        run_name="flat",
        epochs=10,
        batch_size=8,
        max_length=16,
        lr=0.0,
        eval_every=2,
        early_stopping_patience=2,
        log_every=100,
    )
    out = run_local(cfg)
    metrics = json.loads((tmp_path / "models" / "flat" / "metrics.json").read_text())
    sel = metrics["selection"]
    assert [e["step"] for e in sel["evaluations"]] == [2, 4, 6]
    assert sel["stopped_early"] and sel["steps_trained"] == 6 and sel["step"] == 2
    assert sel["planned_steps"] > 6 and metrics["steps"] == 6
    assert out["metrics"]["accuracy"] == sel["evaluations"][0]["accuracy"]
    # the curve is in the training history the job reports to Ray Train and MLflow
    assert [h["eval_accuracy"] for h in metrics["history"] if "eval_accuracy" in h] == [
        e["accuracy"] for e in sel["evaluations"]
    ]


@pytest.mark.timeout(300)
def test_select_best_exports_the_best_evaluation_not_the_last_step(
    tiny_base_dir, tmp_path, make_planted_reviews
):
    train = _write(tmp_path / "train.jsonl", make_planted_reviews(120))
    common = dict(
        model=str(tiny_base_dir),
        train=train,
        output=str(tmp_path / "models"),
        max_steps=12,
        batch_size=8,
        max_length=16,
        lr=3e-2,  # large: the validation accuracy moves around between evaluations
        eval_every=1,
        validation_fraction=0.3,
    )
    best = run_local(FinetuneConfig(run_name="best", **common))
    last = run_local(FinetuneConfig(run_name="last", select="last", **common))
    evals = json.loads((tmp_path / "models" / "best" / "metrics.json").read_text())["selection"]
    accs = [e["accuracy"] for e in evals["evaluations"]]
    assert best["metrics"]["accuracy"] == max(accs)
    assert evals["step"] == evals["evaluations"][accs.index(max(accs))]["step"]
    assert last["metrics"]["accuracy"] == accs[-1]  # same run, same curve: the last weights


def test_length_buckets_cover_every_row_once_with_less_padding(
    tiny_base_dir, tmp_path, make_planted_reviews
):
    rows = make_planted_reviews(400)
    for i, r in enumerate(rows):  # lengths from 6 to ~40 words
        r["text"] = " ".join([r["text"]] * (1 + i % 6))
    train = _write(tmp_path / "train.jsonl", rows)
    recipes = {}
    for buckets in (False, True):
        cfg = FinetuneConfig(
            model=str(tiny_base_dir),
            train=train,
            output=str(tmp_path / "m"),
            batch_size=8,
            max_length=64,
            length_buckets=buckets,
        )
        recipes[buckets] = FinetuneRecipe(cfg)
        recipes[buckets].setup()
    n = len(recipes[True].seqs)
    for recipe in recipes.values():
        batches = recipe.epoch_batches(0)
        assert set(batches.reshape(-1).tolist()) == set(range(n))  # every row, this epoch
        assert (batches == recipe.epoch_batches(0)).all()  # a function of (seed, epoch)
        assert not (batches == recipe.epoch_batches(1)).all()

    def padding(recipe):
        lengths = np.array([len(s) for s in recipe.seqs])
        b = recipe.epoch_batches(0)
        return (lengths[b].max(1, keepdims=True) - lengths[b]).sum()

    assert padding(recipes[True]) < 0.25 * padding(recipes[False])


@pytest.mark.timeout(300)
def test_pool_rows_are_learned_from_the_teacher_alone(
    tiny_base_dir, tmp_path, make_planted_reviews
):
    """16 labelled rows and 400 unlabelled pool rows whose teacher says the opposite of the truth:
    the student follows the teacher it mostly sees; a pool row the cache lacks is an error."""
    labelled = make_planted_reviews(40, seed=1)
    pool_rows = make_planted_reviews(400, seed=2)
    train = _write(tmp_path / "train.jsonl", labelled)
    pool_file = _write(tmp_path / "pool.jsonl", [{"text": r["text"]} for r in pool_rows])
    flipped = np.array([[3.0, -3.0] if r["label"] else [-3.0, 3.0] for r in pool_rows], np.float32)
    cache = str(tmp_path / "teacher")
    write_teacher_cache(
        cache, [r["text"] for r in pool_rows], flipped, {0: "negative", 1: "positive"}
    )
    cfg = FinetuneConfig(
        model=str(tiny_base_dir),
        train=train,
        output=str(tmp_path / "models"),
        run_name="pool",
        pool=[pool_file],
        teacher_cache=cache,
        epochs=3,
        batch_size=16,
        lr=3e-3,
        max_length=16,
        validation_fraction=0.6,
        kd_temperature=1.0,
    )
    recipe = FinetuneRecipe(cfg)
    recipe.setup()
    assert len(recipe.pool_rows) == len({r["text"] for r in pool_rows})
    assert recipe.data_accounting["teacher_covered"] == {"train": 0, "pool": len(recipe.pool_rows)}
    recipe.train()
    assert recipe.evaluate()["accuracy"] <= 0.25

    _write(tmp_path / "pool.jsonl", [{"text": r["text"]} for r in pool_rows] + [{"text": "new"}])
    with pytest.raises(ValueError, match="lacks the logits of 1 of"):
        FinetuneRecipe(cfg).setup()


def test_rows_in_an_evaluation_set_are_dropped_and_counted(tiny_base_dir, tmp_path):
    rows = [{"id": f"r{i}", "text": f"Review number {i}.", "label": i % 2} for i in range(60)]
    train = _write(tmp_path / "train.jsonl", rows)
    # the same reviews, spelled otherwise (case, punctuation): the normalised match finds them
    held = _write(
        tmp_path / "eval.jsonl", [{"text": "REVIEW NUMBER 3"}, {"text": "review number, 7!"}]
    )
    pool_file = _write(
        tmp_path / "pool.jsonl", [{"text": "review number 3"}, {"text": "fresh text"}]
    )
    cache = str(tmp_path / "teacher")
    write_teacher_cache(
        cache, ["review number 3", "fresh text"], np.zeros((2, 2)), {0: "negative", 1: "positive"}
    )
    cfg = FinetuneConfig(
        model=str(tiny_base_dir),
        train=train,
        output=str(tmp_path / "m"),
        exclude=[held],
        pool=[pool_file],
        teacher_cache=cache,
        validation_fraction=0.3,
    )
    recipe = FinetuneRecipe(cfg)
    recipe.setup()
    texts = {r["text"] for r in recipe.train_rows + recipe.val_rows}
    assert "Review number 3." not in texts and "Review number 7." not in texts
    assert len(texts) == 58
    acc = recipe.data_accounting
    assert acc["dropped"]["in_evaluation_set"] == 2 and acc["used"] == 58
    assert [r["text"] for r in recipe.pool_rows] == ["fresh text"]
    assert acc["pool"]["dropped_in_evaluation_set"] == 1
