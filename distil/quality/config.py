"""``QualityConfig`` and the ablation's rows: what ``scripts/quality.py`` compares, and on what.

Every row shares one teacher, one teacher cache, one seed, one distillation budget and one
fine-tune budget; the rows differ only in the one thing each removes from the recipe, so a gap
between two rows is that thing's contribution (DistilBERT's ablation, Sanh et al. 2019, table 4).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field, field_validator

from distil.config import StageConfig


@dataclass(frozen=True)
class RowSpec:
    """One ablation row: how its student starts and which losses distil it (None: not distilled)."""

    what: str
    init: Literal["teacher", "teacher-layers", "random"]
    alphas: dict[str, float] | None = field(default=None)


FULL = {"alpha_ce": 5.0, "alpha_mlm": 2.0, "alpha_cos": 1.0}
ROWS: dict[str, RowSpec] = {
    "teacher": RowSpec("the teacher itself, fine-tuned (the reference)", "teacher"),
    "full": RowSpec(
        "KD + MLM + cosine, student from every other teacher layer", "teacher-layers", FULL
    ),
    "no-cos": RowSpec("KD + MLM, no cosine loss", "teacher-layers", {**FULL, "alpha_cos": 0.0}),
    "mlm-only": RowSpec(
        "MLM only (no KD, no cosine)",
        "teacher-layers",
        {**FULL, "alpha_ce": 0.0, "alpha_cos": 0.0},
    ),
    "no-distil": RowSpec(
        "student from teacher layers, fine-tuned with no distillation", "teacher-layers"
    ),
    "random-init": RowSpec("full recipe (KD + MLM + cosine) from random weights", "random", FULL),
}


class QualityConfig(StageConfig):
    PATH_FIELDS = ("work", "teacher", "prepared", "samples", "out")

    work: str = Field(
        ".distil/quality",
        description="dir for every artifact; a rerun reuses what it finds committed there",
    )
    teacher: str | None = Field(
        None,
        description="adapted teacher dir (e.g. a demo's adapt_teacher output); default: adapt "
        "the packaged teacher with the demo's sample budget",
    )
    prepared: str | None = Field(
        None,
        description="committed prepared shards; default: prepare the sample corpus as the "
        "demo's sample scale does",
    )
    samples: str = Field(
        ".distil/samples", description="sample corpus + reviews dir (built if missing)"
    )
    rows: list[str] = Field(
        default_factory=lambda: list(ROWS),
        description=f"rows to run (the teacher always runs: shares need it): {', '.join(ROWS)}",
    )
    budget: Literal["cpu", "gpu"] = Field(
        "cpu",
        description="budgets file shared with `distil demo --scale`: cpu = demo/sample (2 cores), "
        "gpu = demo/full (one H200; its `quality` section sets this script's budgets)",
    )
    seed: int = Field(0, description="one seed for masking, distillation, init and fine-tuning")
    # --- distillation (every distilled row) ---------------------------------------------------
    steps: int = Field(150, ge=1, description="distillation optimizer steps per student")
    batch_size: int = Field(32, ge=1, description="sequences per distillation step")
    lr: float = Field(5e-4, gt=0, description="distillation peak learning rate")
    warmup_fraction: float = Field(0.1, ge=0, lt=1, description="distillation warm-up share")
    temperature: float = Field(
        1.0, gt=0, description="KD temperature (the demo's: why T = 1, see demo/sample.yaml)"
    )
    student_layers: int | None = Field(None, description="student depth (default: half)")
    kd_positions: Literal["masked", "all"] = Field(
        "masked", description="positions the cache holds KD targets for (all: DistilBERT's)"
    )
    cos_weight: float | None = Field(
        None, ge=0, description="cosine loss weight in the rows that use it (default: 1.0)"
    )
    heldout_fraction: float = Field(0.05, gt=0, lt=1, description="held-out split by seq_id")
    sketch_dims: int = Field(
        32, ge=1, description="hidden-state sketch dims the cache stores (cosine loss rows)"
    )
    # --- fine-tuning (every row, the teacher's included) ---------------------------------------
    finetune_steps: int = Field(80, ge=1, description="sentiment fine-tune steps per model")
    finetune_batch_size: int = Field(32, ge=1, description="fine-tune batch size")
    finetune_max_length: int = Field(64, ge=8, description="fine-tune (and eval) max tokens")
    finetune_lr: float = Field(8e-5, gt=0, description="fine-tune peak learning rate")
    # --- evaluation ---------------------------------------------------------------------------
    in_domain: str = Field("movie_snippets.jsonl", description="fine-tune set (its validation)")
    out_of_domain: str = Field("amazon_snippets.jsonl", description="set no model trained on")
    eval_batch_size: int = Field(64, ge=1, description="held-out MLM rows per batch")
    device: Literal["cpu", "cuda"] = Field(
        "cpu", description="where the in-process distillation and fine-tuning run"
    )
    threads: int = Field(0, ge=0, description="torch intra-op threads (0: torch's default)")
    out: str | None = Field(None, description="JSON result path (default: WORK/quality.json)")

    @field_validator("rows", mode="before")
    @classmethod
    def _row_list(cls, v: Any) -> Any:
        """``--rows full,no-cos`` as well as a YAML list."""
        if isinstance(v, str):
            v = [s.strip() for s in v.replace("[", "").replace("]", "").split(",") if s.strip()]
        return v

    @field_validator("rows")
    @classmethod
    def _known_rows(cls, v: list[str]) -> list[str]:
        unknown = [r for r in v if r not in ROWS]
        if unknown:
            raise ValueError(f"unknown row(s) {unknown}; rows are {', '.join(ROWS)}")
        return ["teacher", *[r for r in ROWS if r in v and r != "teacher"]]
