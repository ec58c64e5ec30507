"""Adapt's method options: which parameters train (``train_layers``, ``head_warmup_tokens``) and
the learning-rate schedule (``lr_schedule``), on a tiny real BertForMaskedLM."""

import pytest
import torch
from bert_fixtures import tiny_bert_config
from safetensors.torch import load_file
from teacher_helpers import make_prepared

from distil.teacher.adapt import adapt
from distil.teacher.adapt_method import plan_trainable, start_phase
from distil.teacher.config import AdaptConfig
from distil.teacher.load import load_teacher


def _mlm(layers: int = 3):
    from transformers import BertForMaskedLM

    torch.manual_seed(0)
    return BertForMaskedLM(tiny_bert_config(layers))


def _names(params) -> set[str]:
    return {n for n, _ in params}


def test_whole_encoder_plan_is_every_parameter_but_the_frozen_word_embeddings():
    model = _mlm()
    word = model.get_input_embeddings().weight
    plan = plan_trainable(model, -1, train_word_embeddings=False)
    planned = {id(p) for _, p in plan.all()}
    assert planned == {id(p) for p in model.parameters() if p is not word}  # today's behaviour
    assert not any(p.requires_grad for p in model.parameters())  # frozen until start_phase
    start_phase(plan, with_body=True)
    assert {id(p) for p in model.parameters() if p.requires_grad} == planned
    with_words = plan_trainable(model, -1, train_word_embeddings=True)
    assert "word_embeddings.weight" in _names(with_words.head)  # tied to the head's decoder


def test_head_warmup_phase_trains_the_head_only_then_the_encoder():
    model = _mlm()
    plan = plan_trainable(model, -1, train_word_embeddings=False)
    start_phase(plan, with_body=False)
    trained = {id(p) for p in model.parameters() if p.requires_grad}
    assert trained == {id(p) for _, p in plan.head}
    assert all(n.startswith("head.") for n in _names(plan.head))
    assert not any(p.requires_grad for p in model.bert.parameters())
    start_phase(plan, with_body=True)
    assert all(p.requires_grad for _, p in plan.body)


def test_train_layers_picks_the_top_encoder_layers():
    model = _mlm(layers=3)
    plan = plan_trainable(model, 1, train_word_embeddings=False)
    assert _names(plan.body) and all(n.startswith("encoder.layer.2.") for n in _names(plan.body))
    start_phase(plan, with_body=True)
    assert not any(p.requires_grad for p in model.bert.embeddings.parameters())
    assert not any(p.requires_grad for p in model.bert.encoder.layer[1].parameters())
    assert all(p.requires_grad for p in model.bert.encoder.layer[2].parameters())
    with pytest.raises(ValueError, match="has 3 encoder layers; use 1..3, or -1"):
        plan_trainable(model, 4, train_word_embeddings=False)


def _weights(path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


@pytest.mark.timeout(300)
def test_adapt_updates_only_what_the_method_trains(
    real_tokenizer_dir, headless_teacher_dir, tmp_path
):
    prepared = str(tmp_path / "prepared")
    make_prepared(prepared, real_tokenizer_dir, rows_per_shard=24)
    base = dict(
        input=prepared, teacher=str(headless_teacher_dir), token_budget=1500, lr=1e-2,
        heldout_fraction=0.25, eval_sequences=4,
    )  # fmt: skip
    before = load_file(str(headless_teacher_dir / "model.safetensors"))  # a BertModel: no head

    def get(w: dict, suffix: str) -> torch.Tensor:
        return next(v for k, v in w.items() if k.endswith(suffix))

    def moved(w: dict, suffix: str) -> bool:
        return not torch.equal(get(w, suffix), get(before, suffix))

    q0, q1 = (f"encoder.layer.{i}.attention.self.query.weight" for i in range(2))
    head = "cls.predictions.transform.dense.weight"
    torch.manual_seed(0)  # adapt seeds (cfg.seed 0) before loading: the same random head
    head_init = load_teacher(str(headless_teacher_dir)).model.state_dict()[head]
    # head warm-up longer than the budget: the encoder never trains, the head does
    adapt(AdaptConfig(**base, output=str(tmp_path / "head"), head_warmup_tokens=10**6))
    w = _weights(tmp_path / "head")
    assert not moved(w, q0) and not moved(w, q1)
    assert not torch.equal(w[head], head_init)
    # top layer only (the tiny teacher has 2): layer 0 and the embeddings stay as they were
    adapt(AdaptConfig(**base, output=str(tmp_path / "top1"), train_layers=1))
    w = _weights(tmp_path / "top1")
    assert moved(w, q1) and not moved(w, q0)
    assert not moved(w, "embeddings.position_embeddings.weight")
    # short head warm-up, then everything: both layers move
    adapt(AdaptConfig(**base, output=str(tmp_path / "warm"), head_warmup_tokens=300))
    w = _weights(tmp_path / "warm")
    assert moved(w, q0) and moved(w, q1)
