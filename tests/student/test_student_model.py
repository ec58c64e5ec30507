from __future__ import annotations

import pytest
import torch
from transformers import BertForMaskedLM

from distil.student.model import MaskedLMForDistillation, build_student, layer_spread


def test_layer_spread_matches_distilbert_and_spreads_other_depths():
    assert layer_spread(12, 6) == [0, 2, 4, 7, 9, 11]  # DistilBERT's published choice
    assert layer_spread(6, 3) == [0, 3, 5]
    assert layer_spread(4, 2) == [0, 3]
    assert layer_spread(4, 4) == [0, 1, 2, 3]
    assert layer_spread(12, 1) == [11]
    with pytest.raises(ValueError, match="student_layers"):
        layer_spread(4, 5)


def test_student_copies_teacher_layers_embeddings_and_head(tiny_teacher_dir):
    teacher = BertForMaskedLM.from_pretrained(tiny_teacher_dir).eval()
    student = build_student(teacher).eval()
    assert student.config.num_hidden_layers == 2
    assert student.config.hidden_size == teacher.config.hidden_size
    t, s = teacher.state_dict(), student.state_dict()
    for name, value in s.items():
        if ".encoder.layer.0." in name:
            assert torch.equal(value, t[name])
        elif ".encoder.layer.1." in name:
            assert torch.equal(value, t[name.replace(".layer.1.", ".layer.3.")])
        else:
            assert torch.equal(value, t[name]), name
    # the decoder stays tied to the word embeddings, as in any BERT MLM
    assert (
        student.cls.predictions.decoder.weight.data_ptr()
        == student.bert.embeddings.word_embeddings.weight.data_ptr()
    )
    # the student really runs fewer layers: outputs differ from the teacher's
    ids = torch.tensor([[101, 7592, 103, 102]])
    with torch.no_grad():
        assert not torch.allclose(student(ids).logits, teacher(ids).logits)


def test_distillation_forward_returns_logits_at_masked_positions_only(tiny_teacher_dir):
    student = build_student(BertForMaskedLM.from_pretrained(tiny_teacher_dir)).eval()
    ids = torch.tensor([[101, 7592, 103, 2088, 102], [101, 103, 103, 102, 0]])
    mask = (ids != 0).long()
    labels = torch.full_like(ids, -100)
    labels[0, 2], labels[1, 1], labels[1, 2] = 2000, 2001, 2002
    with torch.no_grad():
        logits, hidden = MaskedLMForDistillation(student)(ids, mask, labels)
        full = student(input_ids=ids, attention_mask=mask).logits
    assert logits.shape == (3, student.config.vocab_size)
    assert hidden.shape == (2, 5, student.config.hidden_size)
    torch.testing.assert_close(logits, full[labels != -100], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["roberta", "xlm-roberta"])
def test_a_roberta_family_student_is_its_teachers_class_and_runs_as_hf_does(family, tmp_path):
    """Half the teacher's layers of the same class (``roberta.encoder.layer.N`` copied), the
    ``lm_head`` tied; the distillation forward (encoder + head at masked rows, padded rows with
    the tokenizer's pad id, so RoBERTa's position ids start past it) equals HF's own forward."""
    from family_fixtures import save_family_teacher
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    texts = ["the river rose in the night and the farmers moved their cattle uphill"] * 20
    teacher_dir = save_family_teacher(tmp_path / "t", family, texts, seed=3)
    teacher = AutoModelForMaskedLM.from_pretrained(teacher_dir).eval()
    student = build_student(teacher).eval()
    assert type(student) is type(teacher) and student.config.num_hidden_layers == 2
    t = teacher.state_dict()
    for name, value in student.state_dict().items():
        src = name.replace("roberta.encoder.layer.1.", "roberta.encoder.layer.3.")
        assert torch.equal(value, t[src]), name
    assert student.lm_head.decoder.weight.data_ptr() == (
        student.roberta.embeddings.word_embeddings.weight.data_ptr()
    )
    tok = AutoTokenizer.from_pretrained(teacher_dir)
    enc = tok(
        ["the river rose", "the farmers moved their cattle"], padding=True, return_tensors="pt"
    )
    ids, mask = enc["input_ids"], enc["attention_mask"]
    assert (ids[0] == tok.pad_token_id).any()  # a padded row
    labels = torch.full_like(ids, -100)
    labels[0, 1], labels[1, 2], labels[1, 3] = ids[0, 1], ids[1, 2], ids[1, 3]
    with torch.no_grad():
        logits, _ = MaskedLMForDistillation(student)(ids, mask, labels)
        full = student(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(logits, full[labels != -100], rtol=1e-5, atol=1e-5)
