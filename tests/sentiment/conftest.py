"""Fixtures for the sentiment tests: a tiny random BERT base and a planted, learnable task."""

from __future__ import annotations

import numpy as np
import pytest

POSITIVE = ["great", "wonderful", "excellent", "superb", "delightful"]
NEGATIVE = ["awful", "boring", "terrible", "dull", "dreadful"]
FILLER = ["the", "film", "plot", "actor", "scene", "story", "was", "and", "it", "really"]


def planted_reviews(n: int, seed: int = 0) -> list[dict]:
    """Reviews whose label is decided by one sentiment word among filler: a tiny model can
    learn it in a few dozen steps, so "the model learned" is a claim a test can check."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = int(rng.integers(2))
        words = list(rng.choice(FILLER, size=5))
        words.insert(int(rng.integers(6)), str(rng.choice(POSITIVE if label else NEGATIVE)))
        rows.append({"id": f"r{i}", "text": " ".join(words), "label": label})
    return rows


@pytest.fixture(scope="session")
def tiny_base_dir(tmp_path_factory, real_tokenizer_dir):
    """A tiny random BertModel-family dir (MLM head) with the real tokenizer: a stand-in student."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    out = tmp_path_factory.mktemp("tiny_base")
    BertForMaskedLM(cfg).save_pretrained(out)
    AutoTokenizer.from_pretrained(real_tokenizer_dir).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def make_planted_reviews():
    return planted_reviews
