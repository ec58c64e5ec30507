"""A tiny random sentiment classifier (real tokenizer), exported the way distil finetune does."""

from __future__ import annotations

import pytest


def build_tiny_classifier(tokenizer_dir, seed: int = 0):
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        num_labels=2,
        id2label={0: "negative", 1: "positive"},
        label2id={"negative": 0, "positive": 1},
        # A wide init: at the default 0.02 every text gets the same ~0.4/0.6 probabilities;
        # at 0.5 rows really differ and both classes occur, so comparisons mean something.
        initializer_range=0.5,
    )
    model = BertForSequenceClassification(cfg).eval()
    return model, AutoTokenizer.from_pretrained(tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_classifier_url(s3_server, real_tokenizer_dir):
    """URL of a committed classifier dir on the test S3 bucket."""
    from distil.sentiment.classifier import export_classifier

    model, tok = build_tiny_classifier(real_tokenizer_dir)
    url = f"s3://{s3_server.bucket}/models/tiny-classifier"
    export_classifier(model, tok, url, {"accuracy": None, "note": "random weights"})
    return url
