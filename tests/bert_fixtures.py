"""Tiny real BERT checkpoints built in code (no download), shared by the test fixtures."""

from __future__ import annotations

from pathlib import Path


def tiny_bert_config(layers: int = 2, **overrides):
    """Hidden 32, 2 heads, the real bert-base-uncased vocab size."""
    from transformers import BertConfig

    kw = dict(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
    )
    return BertConfig(**{**kw, **overrides})


def save_tiny_bert(out: Path, model_cls, tokenizer_dir: Path, layers: int = 2, seed: int = 0):
    """A tiny random BERT-family checkpoint with the real tokenizer, saved to ``out``."""
    import torch
    from transformers import AutoTokenizer

    torch.manual_seed(seed)
    model_cls(tiny_bert_config(layers)).eval().save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(out)
    return out


def tiny_classifier(tokenizer_dir, seed: int = 0, initializer_range: float = 0.5):
    """A tiny random binary sentiment classifier and its tokenizer.

    A wide init: at the default 0.02 every text gets the same ~0.4/0.6 probabilities; at 0.5
    rows really differ and both classes occur, so comparisons mean something."""
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = tiny_bert_config(
        num_labels=2,
        id2label={0: "negative", 1: "positive"},
        label2id={"negative": 0, "positive": 1},
        initializer_range=initializer_range,
    )
    return BertForSequenceClassification(cfg).eval(), AutoTokenizer.from_pretrained(tokenizer_dir)
