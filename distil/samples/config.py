"""The typed config of ``distil data samples``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from distil.config import StageConfig


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
