"""``distil eval``: MLM agreement/KL on a real teacher cache's heldout split, sentiment accuracy
of real classifiers on review files, the CLI, and the errors for inputs that do not fit."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from distil import storage
from distil.cli import main as cli_main
from distil.config import ConfigError
from distil.quality.eval import evaluate_mlm, evaluate_sentiment, review_sets

_spec = importlib.util.spec_from_file_location(
    "stage3_data", Path(__file__).parents[1] / "train" / "stage3_data.py"
)
stage3_data = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(stage3_data)

FRAC = 0.1


@pytest.fixture(scope="module")
def cache(tmp_path_factory, real_tokenizer_dir, tiny_teacher_dir) -> str:
    prepared = stage3_data.write_prepared(
        str(tmp_path_factory.mktemp("prepared")), real_tokenizer_dir
    )
    root = str(tmp_path_factory.mktemp("caches"))
    return stage3_data.build_cache(prepared, root, tiny_teacher_dir, sparsity="topk", k=8)


def test_student_equal_to_teacher_agrees_fully(cache, tiny_teacher_dir):
    ev = evaluate_mlm(str(tiny_teacher_dir), str(tiny_teacher_dir), cache, heldout_fraction=FRAC)
    assert ev["positions"] > 50
    assert ev["top1_agreement"] == 1.0
    assert ev["kl_coarse"] == pytest.approx(0.0, abs=1e-7)


def test_other_student_disagrees(cache, tiny_teacher_dir, tiny_base_dir):
    ev = evaluate_mlm(str(tiny_teacher_dir), str(tiny_base_dir), cache, heldout_fraction=FRAC)
    assert ev["positions"] > 50
    assert ev["top1_agreement"] < 1.0
    # tiny random models are near-uniform, so the KL is small; the teacher against itself is 0
    same = evaluate_mlm(str(tiny_teacher_dir), str(tiny_teacher_dir), cache, heldout_fraction=FRAC)
    assert ev["kl_coarse"] > 1e-6 and ev["kl_coarse"] > 100 * abs(same["kl_coarse"])


def test_student_with_another_vocab_is_refused(
    cache, tiny_teacher_dir, tmp_path, real_tokenizer_dir
):
    from bert_fixtures import tiny_bert_config
    from transformers import AutoTokenizer, BertForMaskedLM

    BertForMaskedLM(tiny_bert_config(2, vocab_size=1000)).save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(real_tokenizer_dir).save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="another tokenizer"):
        evaluate_mlm(str(tiny_teacher_dir), str(tmp_path), cache, heldout_fraction=FRAC)


def test_cache_of_another_teacher_is_refused(cache, tiny_base_dir):
    with pytest.raises(ConfigError, match="logits of another teacher"):
        evaluate_mlm(str(tiny_base_dir), str(tiny_base_dir), cache, heldout_fraction=FRAC)


# ---------------------------------------------------------------------------- sentiment
def _classifier(out: Path, tokenizer_dir, seed: int) -> str:
    from bert_fixtures import tiny_classifier

    model, tok = tiny_classifier(tokenizer_dir, seed=seed)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def _write_reviews(url: str, sets: dict[str, list[dict]]) -> None:
    for name, rows in sets.items():
        with storage.staged_file(url, name) as f:
            f.write("".join(json.dumps(r) + "\n" for r in rows).encode())
    storage.commit(url, {"kind": "reviews", "files": [{"name": n} for n in sets]})


@pytest.fixture(scope="module")
def sentiment_inputs(tmp_path_factory, real_tokenizer_dir, make_planted_reviews):
    root = tmp_path_factory.mktemp("sentiment")
    movie = make_planted_reviews(40, seed=1)
    for i, r in enumerate(movie):
        r["split"] = "validation" if i % 4 == 0 else "train"
    amazon = [r | {"split": "train"} for r in make_planted_reviews(24, seed=2)]
    reviews = str(root / "reviews")
    _write_reviews(reviews, {"movie_snippets.jsonl": movie, "amazon_snippets.jsonl": amazon})
    clfs = {
        "teacher": _classifier(root / "t", real_tokenizer_dir, 0),
        "student": _classifier(root / "s", real_tokenizer_dir, 1),
    }
    return clfs, reviews, {"movie_snippets.jsonl": movie, "amazon_snippets.jsonl": amazon}


def _hand_predictions(model_dir: str, rows: list[dict]) -> list[int]:
    """One row at a time with plain transformers: no batching, sorting or padding."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    with torch.inference_mode():
        return [int(model(**tok(r["text"], return_tensors="pt")).logits.argmax(-1)) for r in rows]


def _hand_accuracy(model_dir: str, rows: list[dict]) -> tuple[int, int]:
    pred = _hand_predictions(model_dir, rows)
    return sum(p == r["label"] for p, r in zip(pred, rows, strict=True)), len(rows)


def test_sentiment_accuracy_matches_a_hand_check(sentiment_inputs, tmp_path):
    clfs, reviews, rows = sentiment_inputs
    files = review_sets(reviews, "movie_snippets.jsonl", "amazon_snippets.jsonl")
    split = {"movie_snippets.jsonl": "validation", "amazon_snippets.jsonl": "all"}
    acc = evaluate_sentiment(clfs, files, split, cache_dir=str(tmp_path))
    val = [r for r in rows["movie_snippets.jsonl"] if r["split"] == "validation"]
    for model, d in clfs.items():
        for name, subset in (
            ("movie_snippets.jsonl", val),
            ("amazon_snippets.jsonl", rows["amazon_snippets.jsonl"]),
        ):
            pred = _hand_predictions(d, subset)
            correct, n = sum(p == r["label"] for p, r in zip(pred, subset, strict=True)), len(pred)
            got = acc[model][name]
            assert (got["correct"], got["rows"]) == (correct, n)
            assert got["accuracy"] == pytest.approx(correct / n)
            confusion = [[0, 0], [0, 0]]
            for p, r in zip(pred, subset, strict=True):
                confusion[r["label"]][p] += 1
            assert got["confusion"] == confusion
            assert got["hits"] == "".join(
                str(int(p == r["label"])) for p, r in zip(pred, subset, strict=True)
            )
    assert acc["teacher"]["movie_snippets.jsonl"]["rows"] == 10


def test_max_rows_scores_the_same_seeded_subset_for_every_model(sentiment_inputs, tmp_path):
    """``max_rows`` (the demo's tiny budget): the rows a hand check picks with the same seed,
    the same rows for both models, and all rows when the set is smaller."""
    import random

    clfs, reviews, rows = sentiment_inputs
    files = review_sets(reviews, "movie_snippets.jsonl", "amazon_snippets.jsonl")
    ood = {"ood": files["amazon_snippets.jsonl"]}
    every = rows["amazon_snippets.jsonl"]
    assert len(every) > 7
    acc = evaluate_sentiment(clfs, ood, "all", cache_dir=str(tmp_path), max_rows=7)
    picked = [every[i] for i in sorted(random.Random(0).sample(range(len(every)), 7))]
    for model, d in clfs.items():
        correct, n = _hand_accuracy(d, picked)
        assert (acc[model]["ood"]["correct"], acc[model]["ood"]["rows"]) == (correct, 7)
    whole = evaluate_sentiment(clfs, ood, "all", cache_dir=str(tmp_path), max_rows=len(every) + 5)
    assert whole["teacher"]["ood"]["rows"] == len(every)
    with pytest.raises(ConfigError, match="max_rows must be at least 1"):
        evaluate_sentiment(clfs, ood, "all", cache_dir=str(tmp_path), max_rows=0)


def test_review_set_missing_from_manifest(sentiment_inputs):
    _, reviews, _ = sentiment_inputs
    with pytest.raises(ConfigError, match="--out-of-domain rotten_tomatoes.jsonl: not a set"):
        review_sets(reviews, "movie_snippets.jsonl", "rotten_tomatoes.jsonl")


def test_classifier_without_head_is_refused(sentiment_inputs, tiny_base_dir, tmp_path):
    _, reviews, _ = sentiment_inputs
    files = review_sets(reviews, "movie_snippets.jsonl", "amazon_snippets.jsonl")
    with pytest.raises(ConfigError, match="no sequence-classification head"):
        evaluate_sentiment({"student": str(tiny_base_dir)}, files, "all", cache_dir=str(tmp_path))
    # no validation rows in the out-of-domain set: said, not scored as 0 of 0
    with pytest.raises(
        ConfigError, match="amazon_snippets.jsonl has no rows in split 'validation'"
    ):
        evaluate_sentiment({"student": str(tiny_base_dir)}, files, cache_dir=str(tmp_path))


# ---------------------------------------------------------------------------------- CLI
def test_cli_writes_eval_json(
    cache, tiny_teacher_dir, tiny_base_dir, sentiment_inputs, tmp_path, capsys
):
    clfs, reviews, _ = sentiment_inputs
    out = tmp_path / "out"
    rc = cli_main(
        [
            "eval",
            "--teacher", str(tiny_teacher_dir),
            "--student", str(tiny_base_dir),
            "--cache", cache,
            "--heldout-fraction", str(FRAC),
            "--teacher-classifier", clfs["teacher"],
            "--student-classifier", clfs["student"],
            "--reviews", reviews,
            "--model-cache", str(tmp_path / "models"),
            "--output", str(out),
        ]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert rc == 0
    assert "top-1 agreement" in printed and "amazon_snippets.jsonl (out-of-domain)" in printed
    assert "macro precision / recall / F1" in printed and "amazon_snippets.jsonl student" in printed
    result = json.loads((out / "eval.json").read_text())
    assert 0 <= result["mlm"]["top1_agreement"] < 1 and result["mlm"]["kl_coarse"] > 1e-6
    acc = result["sentiment"]["accuracy"]
    assert set(acc) == {"teacher", "student"}
    assert acc["student"]["amazon_snippets.jsonl"]["rows"] == 24
    m = acc["student"]["amazon_snippets.jsonl"]
    assert sum(map(sum, m["confusion"])) == 24 and 0 <= m["f1_macro"] <= 1
    assert {"precision_macro", "recall_macro", "balanced_accuracy"} <= set(m)
    share = result["sentiment"]["student_share"]["amazon_snippets.jsonl"]
    t, s = (acc[m]["amazon_snippets.jsonl"]["accuracy"] for m in ("teacher", "student"))
    assert share == pytest.approx(s / t)


def test_cli_errors_are_clear(cache, tiny_teacher_dir, tmp_path, capsys):
    base = ["eval", "--teacher", str(tiny_teacher_dir), "--student", str(tiny_teacher_dir)]
    assert cli_main([*base, "--cache", str(tmp_path / "nope")]) == 2
    assert "--cache" in capsys.readouterr().err
    rc = cli_main([*base, "--cache", cache, "--heldout-fraction", "0.1", "--reviews", "x"])
    assert rc == 2
    assert (
        "needs --teacher-classifier, --student-classifier and --reviews" in capsys.readouterr().err
    )
