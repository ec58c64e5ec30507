"""Adaptation of an encoder without MLM head on a tiny prepared dataset.

The packaged MiniLM takes minutes per hundred steps on 2 cores; a tiny random encoder shows the
same mechanics (new head + encoder trained, held-out accuracy measured, HF dir saved) in seconds.
"""

import json

import pytest
from teacher_helpers import make_prepared

from distil import storage
from distil.teacher.adapt import adapt
from distil.teacher.config import AdaptConfig
from distil.teacher.load import load_teacher


def _config(prepared: str, out: str, teacher: str, **kw) -> AdaptConfig:
    """A short adaptation with a high LR (batch 8, a quarter of the rows held out)."""
    base = dict(
        input=prepared,
        output=out,
        teacher=teacher,
        batch_size=8,
        lr=1e-2,
        train_word_embeddings=True,
        heldout_fraction=0.25,
        eval_sequences=16,
    )
    return AdaptConfig(**{**base, **kw})


@pytest.mark.timeout(300)
def test_adapt_gives_a_headless_encoder_a_working_head(
    real_tokenizer_dir, headless_teacher_dir, tmp_path, capsys
):
    prepared = str(tmp_path / "prepared")
    make_prepared(prepared, real_tokenizer_dir, rows_per_shard=48)  # ~100 held-out positions
    out = str(tmp_path / "adapted")
    cfg = _config(prepared, out, str(headless_teacher_dir), token_budget=12000)
    assert not load_teacher(str(headless_teacher_dir)).has_mlm_head
    result = adapt(cfg)
    assert result["heldout_accuracy_before"] < 0.02  # a random head
    # the text repeats, so a head that learned anything beats chance (1/30522) by far
    assert result["heldout_accuracy_after"] > result["heldout_accuracy_before"] + 0.03
    assert result["heldout_perplexity_after"] < result["heldout_perplexity_before"] / 10
    assert result["tokens"] >= 4000
    teacher = load_teacher(out, require_mlm_head=True)  # HF dir with a head now
    assert type(teacher.model).__name__ == "BertForMaskedLM"
    metrics = json.loads((tmp_path / "adapted" / "metrics.json").read_text())
    assert metrics["after"]["accuracy"] == result["heldout_accuracy_after"]
    assert storage.read_manifest(out)["kind"] == "adapted_teacher"
    # same inputs again: nothing to do
    capsys.readouterr()
    again = adapt(cfg)
    assert again["skipped"] and "already adapted" in capsys.readouterr().out


@pytest.mark.timeout(300)
def test_adapt_gives_a_headless_roberta_encoder_its_family_head(tmp_path):
    """A bare ``RobertaModel`` (no ``lm_head.``) with its own byte-level BPE: adapted into a
    ``RobertaForMaskedLM`` whose head learned."""
    from family_fixtures import save_family_teacher
    from teacher_helpers import TEXT

    teacher = save_family_teacher(tmp_path / "enc", "roberta", [TEXT] * 4, layers=2, headless=True)
    loaded = load_teacher(str(teacher))
    assert not loaded.has_mlm_head and any(k.startswith("lm_head.") for k in loaded.missing_keys)
    prepared = str(tmp_path / "prepared")
    make_prepared(prepared, teacher, rows_per_shard=48)
    out = str(tmp_path / "adapted")
    result = adapt(_config(prepared, out, str(teacher), token_budget=8000))
    assert result["heldout_perplexity_after"] < result["heldout_perplexity_before"] / 2
    adapted = load_teacher(out, require_mlm_head=True)
    assert type(adapted.model).__name__ == "RobertaForMaskedLM"
    assert adapted.tokenizer_identity == loaded.tokenizer_identity


def test_adapt_needs_both_a_training_and_a_held_out_split(
    real_tokenizer_dir, headless_teacher_dir, tmp_path
):
    prepared = str(tmp_path / "prepared")
    make_prepared(prepared, real_tokenizer_dir, n_shards=1, rows_per_shard=1)  # seq_id 0: held out
    cfg = AdaptConfig(input=prepared, output=str(tmp_path / "x"), teacher=str(headless_teacher_dir))
    with pytest.raises(ValueError, match="0 training and 1 held-out"):
        adapt(cfg)
    assert not (tmp_path / "x").exists()


def test_renamed_and_new_options_keep_the_adapted_teachers_fingerprint():
    """``warmup_frac`` became ``warmup_fraction`` and the clip that was hard-coded at 1.0 became
    ``max_grad_norm``: a config that means what it meant before keys the same adapted teacher
    (a changed fingerprint would redo every user's adaptation)."""
    from distil.teacher.adapt import adapt_fingerprint

    def fp(**kw) -> str:
        return adapt_fingerprint(AdaptConfig(input="i", output="o", **kw), "sha", "data")

    default = fp()
    assert fp(warmup_frac=0.06) == fp(warmup_fraction=0.06) == default
    assert fp(max_grad_norm=1.0) == default
    assert fp(warmup_frac=0.1) == fp(warmup_fraction=0.1) != default
    assert fp(max_grad_norm=0.5) != default
    dump = AdaptConfig(input="i", output="o").fingerprint_dump()
    assert dump["warmup_frac"] == 0.06 and "warmup_fraction" not in dump
    assert "max_grad_norm" not in dump
