"""A tiny random sentiment classifier (real tokenizer), exported the way distil finetune does."""

from __future__ import annotations

import pytest
from bert_fixtures import tiny_classifier


def build_tiny_classifier(tokenizer_dir, seed: int = 0):
    return tiny_classifier(tokenizer_dir, seed)


@pytest.fixture(scope="session")
def tiny_classifier_url(s3_server, real_tokenizer_dir):
    """URL of a committed classifier dir on the test S3 bucket."""
    from distil.sentiment.classifier import export_classifier

    model, tok = build_tiny_classifier(real_tokenizer_dir)
    url = f"s3://{s3_server.bucket}/models/tiny-classifier"
    export_classifier(model, tok, url, {"accuracy": None, "note": "random weights"})
    return url
