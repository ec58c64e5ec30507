"""Tokenizer identity (what decides the ids, not file bytes or location) and the tokenizer
contract of each teacher family (``distil.family``), enforced before stage 1 does any work."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from distil import storage
from distil.data.config import PrepareConfig
from distil.data.prepare_ranges import run_serial
from distil.data.tokenizer import (
    UnsupportedTokenizerError,
    load_tokenizer_info,
    tokenizer_identity,
)


def variant(real_tokenizer_dir: Path, out: Path, edit) -> Path:
    """A copy of the real tokenizer dir whose tokenizer.json is changed by ``edit(dict)``."""
    shutil.copytree(real_tokenizer_dir, out)
    d = json.loads((out / "tokenizer.json").read_text())
    edit(d)
    (out / "tokenizer.json").write_text(json.dumps(d))
    return out


def swap_two_tokens(d: dict) -> None:
    vocab = d["model"]["vocab"]
    vocab["good"], vocab["bad"] = vocab["bad"], vocab["good"]


def lowercase_off(d: dict) -> None:
    d["normalizer"]["lowercase"] = False


def test_identity_ignores_location_formatting_and_resaving(real_tokenizer_dir, tmp_path):
    from transformers import AutoTokenizer

    real = load_tokenizer_info(str(real_tokenizer_dir))
    copy = tmp_path / "copy"
    shutil.copytree(real_tokenizer_dir, copy)
    assert load_tokenizer_info(str(copy)).identity == real.identity
    # re-serialised with another indent and key order, truncation/padding off: same ids
    d = json.loads((real_tokenizer_dir / "tokenizer.json").read_text())
    d["truncation"] = d["padding"] = None
    assert tokenizer_identity(json.dumps(d, indent=4, sort_keys=True)) == real.identity
    # a save_pretrained round trip (what `distil teacher adapt` writes) keeps it
    resaved = tmp_path / "resaved"
    AutoTokenizer.from_pretrained(str(real_tokenizer_dir)).save_pretrained(resaved)
    assert load_tokenizer_info(str(resaved)).identity == real.identity
    assert len(real.identity) == 64


@pytest.mark.parametrize("edit", [swap_two_tokens, lowercase_off])
def test_identity_changes_with_what_maps_text_to_ids(real_tokenizer_dir, tmp_path, edit):
    real = load_tokenizer_info(str(real_tokenizer_dir))
    other = load_tokenizer_info(str(variant(real_tokenizer_dir, tmp_path / "v", edit)))
    assert other.vocab_size == real.vocab_size  # the old vocab-size check could not tell
    assert other.identity != real.identity


def test_prepared_manifest_records_the_identity(real_tokenizer_dir, tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("The river rose in the night.\n\nFarmers moved.\n")
    out = str(tmp_path / "out")
    manifest = run_serial(
        PrepareConfig(input=str(tmp_path / "in"), output=out, tokenizer=str(real_tokenizer_dir))
    )
    tok = storage.read_manifest(out)["tokenizer"]
    assert manifest["tokenizer"] == tok
    assert tok["identity"] == load_tokenizer_info(str(real_tokenizer_dir)).identity
    assert tok["path"] == str(real_tokenizer_dir)


def roberta_style_tokenizer(out: Path) -> Path:
    """A byte-level BPE tokenizer with RoBERTa's special tokens, built with `tokenizers`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    )
    tok.train_from_iterator(["the river rose in the night and the farmers moved"] * 20, trainer)
    out.mkdir()
    tok.save(str(out / "tokenizer.json"))
    return out


def bert_vocab_without_mask(real_tokenizer_dir: Path, out: Path) -> Path:
    """A BertTokenizer saved from the real vocab.txt with [MASK] renamed away."""
    from transformers import BertTokenizerFast

    out.mkdir()
    lines = (real_tokenizer_dir / "vocab.txt").read_text().splitlines()
    (out / "vocab.txt").write_text(
        "\n".join("[MASKED_OUT]" if t == "[MASK]" else t for t in lines) + "\n"
    )
    tok = BertTokenizerFast(vocab_file=str(out / "vocab.txt"), mask_token="[MASKED_OUT]")
    tok.save_pretrained(out)
    return out


def test_a_roberta_tokenizer_takes_its_family_specials(tmp_path):
    """A bare BPE tokenizer with RoBERTa's special tokens (no config.json): its family comes
    from them, and packing/masking get ``<s> </s> <pad> <mask> <unk>``."""
    tok_dir = roberta_style_tokenizer(tmp_path / "roberta")
    info = load_tokenizer_info(str(tok_dir))
    assert info.family == "roberta"
    assert info.special_ids == {"cls": 0, "sep": 2, "pad": 1, "mask": 4, "unk": 3}


def test_identity_covers_the_bpe_merges(tmp_path):
    tok_dir = roberta_style_tokenizer(tmp_path / "roberta")
    text = (tok_dir / "tokenizer.json").read_text()
    d = json.loads(text)
    d["model"]["merges"] = d["model"]["merges"][:-1]  # one merge fewer: other ids for some words
    assert tokenizer_identity(json.dumps(d)) != tokenizer_identity(text)


def test_identity_covers_the_sentencepiece_model(tmp_path):
    """An XLM-R Unigram: one piece's score decides how words split, so it is part of the identity;
    a save/reload through transformers is not."""
    from family_fixtures import xlmr_tokenizer

    tok = xlmr_tokenizer(["the river rose in the night and the farmers moved"] * 20)
    tok.save_pretrained(tmp_path / "x")
    text = (tmp_path / "x" / "tokenizer.json").read_text()
    info = load_tokenizer_info(str(tmp_path / "x"))
    assert info.family == "roberta"  # no config.json: the RoBERTa specials name its roles
    assert info.vocab_size > 65_536 and info.special_ids["mask"] == info.vocab_size - 1
    d = json.loads(text)
    d["model"]["vocab"][-2][1] -= 1.0  # one trained piece's log-probability
    assert tokenizer_identity(json.dumps(d)) != info.identity


@pytest.mark.parametrize("model_type", ["gpt2", "deberta-v2"])
def test_prepare_refuses_another_family_before_any_work(
    tmp_path, good_corpus, monkeypatch, model_type
):
    from distil.family import UnsupportedTeacherError
    from distil.jobs import prepare as prepare_job

    def no_ray():
        raise AssertionError("Ray was started: the tokenizer was not refused first")

    monkeypatch.setattr(prepare_job, "init_ray", no_ray)

    tok_dir = roberta_style_tokenizer(tmp_path / "model")  # its tokens would pass as RoBERTa's
    (tok_dir / "config.json").write_text(json.dumps({"model_type": model_type}))
    out = tmp_path / "out"
    cfg = PrepareConfig(input=str(good_corpus[0]), output=str(out), tokenizer=str(tok_dir))
    with pytest.raises(UnsupportedTeacherError) as e:
        prepare_job.run(cfg)  # the Ray job: refused before Ray starts or anything is written
    msg = str(e.value)
    assert f"is a {model_type!r} checkpoint" in msg and str(tok_dir) in msg
    assert "'bert' (BERT), 'roberta' (RoBERTa), 'xlm-roberta' (XLM-RoBERTa)" in msg
    assert not out.exists()


def test_prepare_refuses_a_bert_vocab_without_mask(real_tokenizer_dir, tmp_path, good_corpus):
    tok_dir = bert_vocab_without_mask(real_tokenizer_dir, tmp_path / "nomask")
    out = tmp_path / "out"
    with pytest.raises(
        UnsupportedTokenizerError,
        match=r"lacks BERT's special tokens \[MASK\] \(.*distil supports these tokenizers",
    ):
        run_serial(
            PrepareConfig(input=str(good_corpus[0]), output=str(out), tokenizer=str(tok_dir))
        )
    assert not out.exists()
