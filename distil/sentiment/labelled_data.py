"""Labelled reviews for fine-tuning: reading them, mapping labels, the train/validation split.

Kept apart from the recipe so that data questions (which rows were usable, which landed in
validation) can be answered and tested without a model or a tokenizer.
"""

from __future__ import annotations

import io
import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from distil import storage
from distil.data.readers.compression import open_stream
from distil.data.readers.review_files import expand_inputs, format_of
from distil.samples.reviews import id_hash, text_key, validation_mask
from distil.sentiment.config import LabelledDataConfig
from distil.sentiment.pool import is_pool, pool_files


def _read_frame(url: str):
    import pandas as pd
    import pyarrow.parquet as pq

    fmt = format_of(url)
    if fmt == "parquet":
        fs, path = storage.arrow_filesystem(url)
        return pq.read_table(path, filesystem=fs).to_pandas()
    with open_stream(url) as f:  # decompressed by its suffix, as every reader does
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


def load_texts(urls: list[str], text_column: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows ``{id, text}`` of unlabelled files (a task-distillation pool, an evaluation set to
    keep out of training), with the count of rows without text (dropped, counted)."""
    rows: list[dict[str, Any]] = []
    rows_in = 0
    files: list[str] = []
    for url in urls:
        # a committed pool dir (``distil pool``): its pool parts, not its train.jsonl
        files += pool_files(url) if is_pool(url) else [url]
    for file_url in expand_inputs(files):
        df = _read_frame(file_url)
        if text_column not in df.columns:
            raise ValueError(f"{file_url}: no column {text_column!r} (columns: {list(df.columns)})")
        ids = df["id"].tolist() if "id" in df.columns else None
        for i, text in enumerate(df[text_column].tolist()):
            rows_in += 1
            if isinstance(text, str) and text.strip():
                rid = ids[i] if ids is not None and ids[i] == ids[i] else f"{file_url}:{i}"
                rows.append({"id": str(rid), "text": text})
    return rows, {"rows_in": rows_in, "used": len(rows), "dropped_empty": rows_in - len(rows)}


def drop_matching(rows: list[dict[str, Any]], keys: set[str]) -> tuple[list[dict[str, Any]], int]:
    """``rows`` without those whose normalised text (:func:`text_key`) is in ``keys``; the
    number dropped."""
    kept = [r for r in rows if text_key(r["text"]) not in keys]
    return kept, len(rows) - len(kept)


def split_rows(
    rows: list[dict[str, Any]], fraction: float
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, validation) by a hash of the row id: stable across runs, models and file order."""
    mask = validation_mask([r["id"] for r in rows], fraction)
    return [r for r, v in zip(rows, mask, strict=True) if not v], [
        r for r, v in zip(rows, mask, strict=True) if v
    ]


@dataclass
class TaskData:
    """What a fine-tune trains and validates on: labelled training rows, validation rows, pool
    rows (unlabelled, for the KD term) and the accounting of every row left out."""

    train: list[dict[str, Any]]
    val: list[dict[str, Any]]
    pool: list[dict[str, Any]]
    accounting: dict[str, Any]


def assemble(cfg: LabelledDataConfig, train_url: str) -> TaskData:
    """The rows of a fine-tune: read, kept out of the evaluation sets, split by id hash, sampled.

    Rows whose normalised text is in an ``--exclude`` set are dropped before the split (counted as
    ``in_evaluation_set``); pool rows are also dropped when they match a validation text (early
    stopping must not see a text it scores) — both counted. Training and validation rows are
    ordered by the id hash: source files are often sorted by label (the movie snippets are:
    positives first), so a "first N rows" budget would be one class."""
    rows, accounting = load_labelled(
        train_url, cfg.text_column, cfg.label_column, cfg.id_column, list(cfg.labels)
    )
    excluded: set[str] = set()
    if cfg.exclude:
        ev, _ = load_texts(list(cfg.exclude), cfg.text_column)
        excluded = {text_key(r["text"]) for r in ev}
        rows, n = drop_matching(rows, excluded)
        accounting["used"] -= n
        accounting["dropped"] = {**accounting["dropped"], "in_evaluation_set": n}
        accounting["exclude"] = {"sets": list(cfg.exclude), "texts": len(excluded)}
    train, val = split_rows(rows, cfg.validation_fraction)
    train.sort(key=lambda r: id_hash(r["id"]))
    val.sort(key=lambda r: id_hash(r["id"]))
    if cfg.max_train_examples:
        train = train[: cfg.max_train_examples]
    if cfg.max_validation_examples:
        val = val[: cfg.max_validation_examples]
    pool: list[dict[str, Any]] = []
    if getattr(cfg, "pool", None):  # a fine-tune's KD-only rows (distil pool has none)
        pool, pool_acc = load_texts(list(cfg.pool), cfg.text_column)
        pool, in_eval = drop_matching(pool, excluded)
        pool, in_val = drop_matching(pool, {text_key(r["text"]) for r in val})
        accounting["pool"] = {
            **pool_acc,
            "used": len(pool),
            "dropped_in_evaluation_set": in_eval,
            "dropped_in_validation": in_val,
        }
    return TaskData(train, val, pool, accounting)


__all__ = [
    "TaskData",
    "assemble",
    "drop_matching",
    "load_labelled",
    "load_texts",
    "split_rows",
]
