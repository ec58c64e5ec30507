"""The task-distillation pool's augmentations and bookkeeping (no Beam: tests/pipelines/
test_task_pool.py labels a pool end to end)."""

from __future__ import annotations

import numpy as np
import pytest

from distil.samples.reviews import text_key
from distil.sentiment import pool


@pytest.fixture(scope="module")
def synonyms(real_tokenizer_dir):
    # the packaged encoder's real input embeddings: its neighbours are words a reader recognises
    return pool.Synonyms(str(real_tokenizer_dir), neighbours=8)


def test_synonyms_are_near_words_of_the_vocabulary(synonyms):
    assert {"wonderful", "excellent", "terrific"} & set(synonyms.table["great"])
    assert {"boring", "bland"} & set(synonyms.table["dull"])
    assert all(w.isalpha() and "##" not in w for w in synonyms.table["movie"])
    assert "great" not in synonyms.table["great"]


def test_synonym_replacement_keeps_punctuation_case_and_unknown_words(synonyms):
    rng = np.random.default_rng(0)
    text = "Great acting, but the plot is dull -- zzyzx!"
    out = synonyms.replace(text, rng, prob=1.0)
    assert out != text
    # non-word runs are untouched, a capital stays a capital, a word with no entry stays
    assert out.count(",") == 1 and out.endswith("zzyzx!") and " -- " in out
    assert out[0].isupper()
    assert synonyms.replace(text, np.random.default_rng(0), prob=1.0) == out  # seeded


def test_span_deletion_and_shuffle():
    rng = np.random.default_rng(1)
    text = "one two three four five six seven eight nine ten"
    deleted = pool.delete_span(text, rng)
    assert len(deleted.split()) == 9 and set(deleted.split()) < set(text.split())
    shuffled = pool.shuffle_span(text, rng)
    assert sorted(shuffled.split()) == sorted(text.split())
    assert pool.delete_span("too short", rng) == "too short"


def test_augment_counts_every_copy_and_keeps_forbidden_and_training_texts_out():
    train = [{"id": f"t{i}", "text": f"review number {i}"} for i in range(10)]
    forbidden = {text_key("an evaluation text")}

    def augment_one(text: str, rng: np.random.Generator) -> str:
        n = int(text.split()[-1])
        if n == 0:
            return "An evaluation text!"  # the same review, spelled otherwise: forbidden
        if n == 1:
            return text.upper()  # the training text itself, by normalised text
        if n == 2:
            return "a repeat"  # made by every copy: kept once
        return f"{text} variant {int(rng.integers(1000))}"

    rows, counts = pool.augment(train, augment_one, 3.0, seed=0, forbidden=forbidden)
    assert counts["generated"] == 30
    assert counts["forbidden"] == 3 and counts["same_as_training_text"] == 3
    assert counts["repeated"] == 2
    assert counts["kept"] == len(rows) == 30 - 3 - 3 - 2
    keys = [text_key(r["text"]) for r in rows]
    assert len(set(keys)) == len(keys)
    assert not set(keys) & (forbidden | {text_key(t["text"]) for t in train})
    again, _ = pool.augment(train, augment_one, 3.0, seed=0, forbidden=forbidden)
    assert again == rows  # a pool is a function of its inputs
    other, _ = pool.augment(train, augment_one, 3.0, seed=1, forbidden=forbidden)
    assert other != rows


def test_prose_rows_are_sentences_of_review_length():
    text = (
        "It is a truth universally acknowledged, that a single man in possession of a good "
        "fortune, must be in want of a wife. Yes. However little known the feelings or views "
        "of such a man may be on his first entering a neighbourhood, this truth is so well fixed."
    )
    sentences = pool.prose_sentences([text])
    assert len(sentences) == 2 and sentences[0].startswith("It is a truth")
    train = [{"id": "t0", "text": "a fine film"}]
    rows, counts = pool.augment(
        train, lambda t, rng: t + " indeed", 1.0, 0, set(), prose=sentences, prose_rows=5
    )
    assert [r["method"] for r in rows] == ["augment", "prose", "prose"]
    assert counts["kept"] == 3


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="unknown augmentation"):
        pool.augmenter(["synonym", "backtranslate"], None, 0.3)
    with pytest.raises(ValueError, match="needs an encoder"):
        pool.augmenter(["synonym"], None, 0.3)
