"""Typed configs for the data commands: ``distil prepare`` (stage 1) and ``distil data samples``."""

from __future__ import annotations

from typing import Literal

import yaml
from pydantic import Field, field_validator

from distil.config import StageConfig
from distil.packaged import PACKAGED_TEACHER

InputFormat = Literal["auto", "wiki", "text", "jsonl", "parquet"]


class PrepareConfig(StageConfig):
    PATH_FIELDS = ("input", "output", "tokenizer")

    input: str | list[str] = Field(
        ...,
        description="input URL(s): a folder (every .xml.bz2/.txt/.jsonl/.parquet file under it), "
        "one file, or a glob; each file is one input shard. Several: a YAML list '[url1, url2]'",
    )
    output: str = Field(..., description="output folder URL for the packed Parquet shards")
    tokenizer: str = Field(
        PACKAGED_TEACHER,
        description="model directory (path/URL/packaged:NAME) holding the fast tokenizer.json",
    )
    seq_len: int = Field(128, ge=8, le=8192, description="tokens per packed sequence")
    cross_document: bool = Field(
        True,
        description="concatenate documents ([SEP] between them) and chunk, run_mlm.py style; "
        "--no-cross-document never mixes documents in a sequence (short tails padded)",
    )
    format: InputFormat = Field(
        "auto", description="input format; auto picks it from each file's extension"
    )
    text_column: str = Field("text", description="JSONL/Parquet field holding the text")
    id_column: str | None = Field(
        None, description="JSONL/Parquet field holding a document id (default: file:offset)"
    )
    max_line_bytes: int = Field(
        4 * 1024 * 1024,
        ge=1024,
        description="JSONL lines / book lines longer than this are dead-lettered "
        "(reason line_too_long) without being held in memory",
    )
    strict: bool = Field(
        False, description="fail on the first bad record instead of dead-lettering"
    )
    dedup: bool = Field(
        True,
        description="remove duplicate documents before packing: exact (same text after NFKC, "
        "case folding and whitespace collapsing) and near (MinHash LSH over word 5-grams, 14 "
        "bands x 8 rows; estimated Jaccard >= --dedup-threshold); the lowest document id of "
        "each cluster is kept. --no-dedup keeps every document",
    )
    dedup_threshold: float = Field(
        0.8,
        ge=0.5,
        le=1.0,
        description="near duplicates: the share of MinHash rows two documents must agree on "
        "(their estimated word 5-gram Jaccard similarity)",
    )
    wiki_range_bytes: int = Field(
        256 << 20,
        ge=1,
        description="a bz2 wiki dump bigger than this is split into ranges of whole bz2 streams "
        "of about this size, read by all workers (never changes the output)",
    )
    num_workers: int = Field(
        2, ge=1, description="input shards processed in parallel (never changes the output)"
    )
    cpus_per_worker: float = Field(0.5, gt=0, description="Ray CPUs reserved per shard task")
    log_every_s: float = Field(10.0, gt=0, description="seconds between progress log lines")

    @field_validator("input")
    @classmethod
    def _as_list(cls, v: str | list[str]) -> list[str]:
        if isinstance(v, str) and v.lstrip().startswith("["):
            v = yaml.safe_load(v)  # --input '[a, b]' on the command line
        items = [v] if isinstance(v, str) else list(v)
        if not items or not all(isinstance(x, str) and x for x in items):
            raise ValueError("input needs at least one URL")
        return items


class SamplesConfig(StageConfig):
    output: str = Field(
        ..., description="output URL; the corpus goes to OUTPUT/corpus/ (prepare's input)"
    )
    force: bool = Field(False, description="rebuild even if OUTPUT/corpus/ is already committed")
    brown_group: Literal["category", "file"] = Field(
        "category",
        description="Brown corpus: one JSONL shard per genre category (15) or per file (500); "
        "one document per Brown file either way",
    )
