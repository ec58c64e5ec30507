"""Config of stage 4b, ``distil score`` (Apache Beam)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from distil.config import StageConfig


class ScoreConfig(StageConfig):
    """Score review files with a fine-tuned classifier (Apache Beam)."""

    # Not model_cache: it is per-machine scratch, relative to each Beam worker's own cwd.
    PATH_FIELDS = ("input", "model", "output", "teacher_cache")

    input: list[str] = Field(
        ...,
        description="review files: a URL, or a YAML list of URLs, directories or globs (JSONL .jsonl/.json, CSV .csv/.tsv, "
        "Parquet .parquet; .gz/.bz2/.zst/.xz compression by extension)",
    )
    model: str = Field(
        ...,
        description="fine-tuned model: its dir URL, a latest.json pointer written by distil "
        "finetune, or a registry URI models:/NAME@ALIAS (e.g. @champion) or models:/NAME/VERSION "
        "(MLflow Model Registry; the version is recorded in the run's summary)",
    )
    output: str = Field(
        ...,
        description="output URL: the datasets OUTPUT/scored/dt=<date>/ and "
        "OUTPUT/dead_letter/dt=<date>/, and each run's manifest in OUTPUT/run_id=<run_id>/",
    )
    run_id: str | None = Field(
        None,
        description="run id (default: UTC timestamp); re-running an id replaces its output",
    )
    id_column: str | None = Field(
        "id",
        description="id column; where a file or row has no id: id = hash of (file URL, row)",
    )
    text_column: str = Field("text", description="column holding the review text")
    input_format: Literal["auto", "jsonl", "csv", "parquet"] = Field(
        "auto", description="file format (auto: from the extension)"
    )
    max_length: int = Field(
        256, description="tokens per review; longer reviews are truncated and flagged"
    )
    batch_size: int | None = Field(
        None,
        ge=1,
        description="rows per RunInference batch (sorted by length inside); default 512 on "
        "cpu, 4096 on a cuda device",
    )
    micro_batch_size: int | None = Field(
        None,
        ge=1,
        description="rows per forward pass after sorting a batch by length; default 64 on "
        "cpu, the whole batch on a cuda device (one forward per batch; with widely varying "
        "review lengths a smaller value pads less)",
    )
    split_bytes: int | None = Field(
        None,
        ge=1,
        description="read input files in ranges of about this many bytes (JSONL/CSV byte "
        "ranges cut at record boundaries, Parquet row groups), so one big file is scored by "
        "every worker; compressed files are read whole. Default: the run's input bytes / 64, "
        "between 64 KiB and 64 MiB",
    )
    rows_per_file: int = Field(
        50_000,
        ge=1,
        description="most rows per output Parquet part (a worker also ends a part at the end of "
        "each bundle)",
    )
    quantize: bool = Field(
        False, description="dynamic int8 quantisation of the Linear layers (CPU speed-up)"
    )
    bf16: bool | None = Field(
        None,
        description="bfloat16 forward pass: bf16 weights on a GPU (tensor cores), bf16 "
        "autocast on CPU (a speed-up on AVX512-BF16/AMX CPUs; exclusive with --quantize). "
        "Default: on for a cuda device, off on cpu",
    )
    torch_threads: int | None = Field(
        None,
        description="intra-op torch threads per Beam SDK worker process (default: on "
        "FnApiRunner/DirectRunner the CPUs divided by --direct_num_workers, on distributed "
        "runners 1)",
    )
    device: str = Field(
        "cpu",
        description="torch device the model runs on in each worker: cpu, or cuda / cuda:N on "
        "GPU workers (--bf16 then uses tensor cores; --quantize is CPU-only)",
    )
    share_model_across_processes: bool = Field(
        False,
        description="one model per machine shared by all SDK worker processes (Beam "
        "multi_process_shared); default: one copy per worker process, shared by its threads",
    )
    model_cache: str = Field(
        ".distil/cache/models",
        description="local directory the model is pulled into (once, verified by sha256)",
    )
    teacher_cache: str | None = Field(
        None,
        description="cached teacher class logits (keyed by sha256 of the text): the summary "
        "reports student-teacher agreement and mean KL on the covered rows",
    )
    incremental: bool = Field(
        False,
        description="score only the input files that no other committed run under --output has "
        "scored with this model (same URL, size and etag/sha256); a file whose content changed "
        "is scored again and reported in the summary's files_changed",
    )
    rescore: bool = Field(
        False, description="with --incremental: score every input file again (ignore the ledger)"
    )
    date: str | None = Field(
        None,
        description="the day this run is for: YYYY-MM-DD, today or yesterday (UTC). Replaces "
        "{date} in --input URLs (s3://b/reviews/dt={date}/) and names the output partition "
        "dt=<date> (default: the run's UTC date)",
    )
    keep_columns: list[str] = Field(
        default_factory=list,
        description="input columns copied into the scored rows: name or name:type "
        "(type string, int64, float64 or bool; default string), comma-separated or a YAML list; "
        "a value that does not convert is a bad_column dead letter",
    )
    max_inference_error_rate: float = Field(
        0.1,
        ge=0,
        le=1,
        description="most rows (share of those reaching the model) that may raise in the model "
        "and become inference_error dead letters; above it the run fails uncommitted, since a "
        "model that raises on most rows is broken, not the rows",
    )
    allow_file_errors: bool = Field(
        False,
        description="exit 0 even if an input file failed as a whole (unreadable from its first "
        "record: corrupt, wrong format, no permission). The run commits the other files either "
        "way; a failed file is not marked scored, so the next incremental run tries it again "
        "(summary files_failed, with the number of tries)",
    )
    lease_seconds: float = Field(
        300,
        ge=10,
        description="life of the output's lease (OUTPUT/_lease.json: one run writes an output "
        "at a time; another run on it stops before reading anything). The run renews it every "
        "third of this; a crashed run's lease blocks the output this long at most, then the "
        "next run takes it over",
    )
    break_lease: bool = Field(
        False,
        description="take the output's lease even though another run holds it: for an operator "
        "who knows that run is dead (a killed launcher, a cancelled cluster job)",
    )
    runner: str = Field(
        "FnApiRunner",
        description="Beam runner: FnApiRunner, DirectRunner (local), FlinkRunner, SparkRunner, "
        "DataflowRunner (their options follow as ordinary flags, e.g. --flink_master=HOST:8081)",
    )
    beam_args: list[str] = Field(
        default_factory=list,
        description="Beam pipeline options as a YAML list, passed on unchecked (for runner "
        "options only a Java job server declares); flags on the command line after the stage's "
        "own are appended here once Beam is shown to know them",
    )

    @field_validator("input", "beam_args", mode="before")
    @classmethod
    def _one_or_many(cls, v):
        # `--input s3://b/x.jsonl` (one URL) as well as `--input '[a, b]'` (a YAML list)
        return [v] if isinstance(v, str) else v

    @field_validator("keep_columns", mode="before")
    @classmethod
    def _comma_list(cls, v):
        # `--keep-columns product,stars:int64` as well as a YAML list
        return [c.strip() for c in v.split(",") if c.strip()] if isinstance(v, str) else v

    @field_validator("keep_columns")
    @classmethod
    def _known_types(cls, v):
        from distil.score.scored import parse_keep_columns

        parse_keep_columns(v)  # a bad type or a name the output already has fails here
        return v

    @field_validator("date", mode="before")
    @classmethod
    def _iso_date(cls, v):
        # YAML reads `date: 2026-12-01` as a datetime.date
        return v.isoformat() if hasattr(v, "isoformat") else v

    @field_validator("run_id")
    @classmethod
    def _path_safe(cls, v):
        # the run id names folders and dataset files (part-<run_id>-<uuid>.parquet), and the
        # publish step finds a run's files by that name: no globbing or path characters
        if v is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._:+-]*", v):
            raise ValueError(f"run id {v!r}: use letters, digits and . _ : + - only")
        return v
