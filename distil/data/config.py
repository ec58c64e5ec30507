"""The typed config of ``distil prepare`` (stage 1)."""

from __future__ import annotations

from typing import Literal

import yaml
from pydantic import Field, field_validator

from distil.config import StageConfig
from distil.packaged import PACKAGED_TEACHER

InputFormat = Literal["auto", "wiki", "text", "jsonl", "csv", "tsv", "parquet", "arrow"]


class PrepareConfig(StageConfig):
    PATH_FIELDS = ("input", "output", "tokenizer")

    input: str | list[str] = Field(
        ...,
        description="input URL(s): a folder (every file under it: .xml dumps, .txt books, "
        ".jsonl/.json/.ndjson, .csv/.tsv, .parquet, datasets save_to_disk folders; any but "
        "Parquet/Arrow also .gz/.bz2/.zst/.xz), one file, or a glob (any fsspec URL: s3://, "
        "hf://datasets/…); each file is one input shard. A file no reader takes stops the run "
        "before any work (see --skip-unknown). Several: a YAML list '[url1, url2]'",
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
        "auto",
        description="input format of every file; auto picks it from each file's name "
        "(compression from the last suffix, checked against the file's first bytes)",
    )
    skip_unknown: bool = Field(
        False,
        description="go on without the input files no reader takes (unknown type, a compressed "
        "file whose bytes are not its suffix's format, …) instead of stopping before any "
        "work; each is listed with its reason in the manifest's skipped_inputs",
    )
    text_column: str = Field(
        "text", description="JSON/CSV/TSV/Parquet/Arrow field (CSV/TSV: header name) of the text"
    )
    id_column: str | None = Field(
        None,
        description="JSON/CSV/TSV/Parquet/Arrow field holding a document id (default: file:offset)",
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
    range_bytes: int = Field(
        256 << 20,
        ge=1,
        description="an uncompressed JSON lines, CSV/TSV or Parquet file bigger than this is "
        "split into ranges of about this size at record boundaries (Parquet: between row "
        "groups), read by all workers (never changes the output)",
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
