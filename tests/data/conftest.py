"""Stage 1 fixtures: generated corpora (see prepare_corpus.py) and the real tokenizer."""

from __future__ import annotations

import pytest
from prepare_corpus import write_bad_corpus, write_good_corpus


@pytest.fixture
def good_corpus(tmp_path):
    root = tmp_path / "corpus"
    return root, write_good_corpus(root)


@pytest.fixture
def bad_corpus(tmp_path):
    root = tmp_path / "bad"
    return root, write_bad_corpus(root)
