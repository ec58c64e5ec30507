"""Fixtures of the teacher tests (helpers live in teacher_helpers.py)."""

from __future__ import annotations

import pytest
from bert_fixtures import save_tiny_bert
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
    from transformers import BertModel

    out = tmp_path_factory.mktemp("headless_teacher")
    return save_tiny_bert(out, BertModel, real_tokenizer_dir, seed=1)
