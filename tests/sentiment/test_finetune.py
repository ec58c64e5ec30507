"""The fine-tuning recipe without Ray (world size 1): data, split, schedule, KD, export.

The KD formula itself is tested in tests/test_losses.py (``kd_dense``)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from distil import storage
from distil.sentiment.config import FinetuneConfig
from distil.sentiment.finetune import FinetuneRecipe, classification_metrics, run_local
from distil.sentiment.labelled_data import load_labelled
from distil.sentiment.teacher_cache import write_teacher_cache


def test_metrics():
    m = classification_metrics(np.array([1, 1, 0, 0]), np.array([1, 0, 0, 0]), 2)
    assert m["accuracy"] == 0.75
    assert m["f1"] == pytest.approx(2 / 3)  # positive class: tp 1, fp 1, fn 0
    assert m["f1_macro"] == pytest.approx((2 / 3 + 0.8) / 2)


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
    assert recipe.optimizer.param_groups[0]["lr"] == 0.0  # the first step's LR
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

    cfg = FinetuneConfig(
        model=str(tiny_base_dir),
        output=str(tmp_path / "models"),
        run_name="tiny",
        reviews_cache=str(tmp_path / "reviews"),
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


def test_names_callers_import_from_the_recipe_module_still_resolve():
    """jobs/finetune.py and older callers import these from distil.sentiment.finetune."""
    from distil.sentiment import finetune, finetune_export, labelled_data

    for name in ("default_train_url", "load_labelled", "split_rows"):
        assert getattr(finetune, name) is getattr(labelled_data, name)
    for name in ("model_url_for", "metrics_of"):
        assert getattr(finetune, name) is getattr(finetune_export, name)


def test_fine_tunes_of_one_name_under_two_outputs_keep_separate_ray_runs():
    """The demo fine-tunes a teacher and a student classifier, both `--run-name model`, into
    different outputs with one Ray storage: the student must not resume the teacher's checkpoint."""
    from distil.jobs.finetune import run_name_of

    teacher, student = "s3://b/run/finetune_teacher-1/model", "s3://b/run/finetune_student-2/model"
    assert run_name_of(teacher) != run_name_of(student)
    assert run_name_of(teacher) == run_name_of(teacher + "/")
    assert run_name_of(teacher).startswith("model-")
