"""Fixtures of the teacher tests (helpers live in teacher_helpers.py)."""

from __future__ import annotations

import pytest
from teacher_helpers import make_prepared


@pytest.fixture(scope="session")
def prepared_dir(tmp_path_factory, real_tokenizer_dir) -> str:
    """A small local prepared dataset: 2 shards x 12 rows, seq_len 32."""
    url = str(tmp_path_factory.mktemp("prepared"))
    make_prepared(url, real_tokenizer_dir)
    return url


@pytest.fixture(scope="session")
def headless_teacher_dir(tmp_path_factory, real_tokenizer_dir):
    """A tiny random ``BertModel`` (encoder only, no MLM head) with the real vocab."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(1)
    cfg = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    out = tmp_path_factory.mktemp("headless_teacher")
    BertModel(cfg).save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(real_tokenizer_dir).save_pretrained(out)
    return out
