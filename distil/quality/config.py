"""``QualityConfig`` and the quality table's rows: what ``scripts/quality.py`` compares, and on what.

Every row shares one MLM teacher, one teacher cache, one sentiment teacher, one seed, one
distillation budget and one fine-tune budget; the rows differ only in the distillation each gets,
so a gap between two rows is that distillation's contribution. Two distillations (DistilBERT,
Sanh et al. 2019; TinyBERT, Jiao et al. 2020):

* **general** (stage 3, ``distil distil``): the student's masked-LM learns the MLM teacher's
  cached logits on the corpus (KD + MLM + cosine), before any labels;
* **task** (stage 4a, ``distil pool`` + ``distil finetune --pool``): the student's classifier
  learns the fine-tuned sentiment teacher's answers on the training reviews and on a pool of
  augmented copies the teacher labelled (KD; CE on the labelled rows as well).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field, field_validator

from distil.config import StageConfig


@dataclass(frozen=True)
class RowSpec:
    """One row: how its student starts, which losses distil it in general (None: not distilled
    before fine-tuning) and whether its fine-tune learns from the task teacher's pool."""

    what: str
    init: Literal["teacher", "teacher-layers", "random"]
    alphas: dict[str, float] | None = field(default=None)
    task: bool = False


FULL = {"alpha_ce": 5.0, "alpha_mlm": 2.0, "alpha_cos": 1.0}
ROWS: dict[str, RowSpec] = {
    "teacher": RowSpec("the teacher itself, fine-tuned (the reference)", "teacher"),
    "full": RowSpec(
        "general (KD + MLM + cosine) + task distillation, student from every other teacher layer",
        "teacher-layers",
        FULL,
        task=True,
    ),
    "general-only": RowSpec(
        "general distillation only, fine-tuned on the labels (the recipe before task distillation)",
        "teacher-layers",
        FULL,
    ),
    "task-only": RowSpec(
        "task distillation only: every other teacher layer, no general distillation",
        "teacher-layers",
        task=True,
    ),
    "no-distil": RowSpec(
        "no distillation: every other teacher layer, fine-tuned on the labels only",
        "teacher-layers",
    ),
    # the general distillation's own ablation (DistilBERT's table 4): fine-tuned on labels only
    "no-cos": RowSpec(
        "general KD + MLM, no cosine loss", "teacher-layers", {**FULL, "alpha_cos": 0.0}
    ),
    "mlm-only": RowSpec(
        "general MLM only (no KD, no cosine)",
        "teacher-layers",
        {**FULL, "alpha_ce": 0.0, "alpha_cos": 0.0},
    ),
    "random-init": RowSpec("general distillation from random weights", "random", FULL),
}
DEFAULT_ROWS = ["teacher", "full", "general-only", "task-only", "no-distil"]


class QualityConfig(StageConfig):
    PATH_FIELDS = ("work", "teacher", "prepared", "samples", "out", "sentiment_teacher")

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
        default_factory=lambda: list(DEFAULT_ROWS),
        description=f"rows to run (the teacher always runs: shares need it): {', '.join(ROWS)} "
        f"(default: {', '.join(DEFAULT_ROWS)})",
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
    sentiment_teacher: str | None = Field(
        None,
        description="model the sentiment teacher is fine-tuned from (default: the MLM teacher, "
        "--teacher); e.g. packaged:all-minilm-l6-v2, the encoder before MLM adaptation",
    )
    teacher_lr: float = Field(5e-5, gt=0, description="sentiment teacher's peak learning rate")
    teacher_epochs: float = Field(3.0, gt=0, description="sentiment teacher's most epochs")
    finetune_lr: float = Field(1e-4, gt=0, description="students' fine-tune peak learning rate")
    finetune_epochs: float = Field(
        3.0,
        gt=0,
        description="students' most epochs over the labelled rows (rows with task distillation: "
        "--pool-epochs over labelled + pool rows); every student gets the same most steps",
    )
    finetune_steps: int | None = Field(
        None, ge=1, description="cap every fine-tune at this many steps (a quick look)"
    )
    finetune_batch_size: int = Field(32, ge=1, description="fine-tune batch size")
    finetune_max_length: int = Field(64, ge=8, description="fine-tune (and eval) max tokens")
    eval_every: int = Field(
        100, ge=1, description="validation evaluations every N fine-tune steps (early stopping)"
    )
    patience: int = Field(
        10,
        ge=1,
        description="stop a fine-tune after N evaluations without a better accuracy (10 x 100 "
        "steps: the validation accuracy of ~1k reviews moves by a point between evaluations)",
    )
    # --- task distillation (rows with task: true) ---------------------------------------------
    pool_multiple: float = Field(
        4.0, ge=0, description="augmented pool rows per training review (0: the labelled rows only)"
    )
    pool_methods: list[str] = Field(
        default_factory=lambda: ["synonym"],
        description="augmentation steps (distil pool --methods)",
    )
    replace_prob: float = Field(0.3, gt=0, le=1, description="synonym replacement share")
    pool_epochs: float = Field(
        1.0, gt=0, description="epochs over labelled + pool rows for the task-distilled rows"
    )
    kd_alpha: float = Field(0.5, ge=0, le=1, description="KD weight on labelled rows")
    curve: list[float] = Field(
        default_factory=list,
        description="instead of the table: the full row at each of these pool sizes (multiples "
        "of the training split, e.g. 0,1,4,16), written as WORK/curve.json and curve.png",
    )
    kd_temperature: float = Field(2.0, gt=0, description="task KD temperature")
    # --- evaluation ---------------------------------------------------------------------------
    in_domain: str = Field("movie_snippets.jsonl", description="fine-tune set (its validation)")
    out_of_domain: str = Field("amazon_snippets.jsonl", description="set no model trained on")
    unseen: str | None = Field(
        "rotten_tomatoes.jsonl",
        description="a set whose rows matching --in-domain texts are removed (normalised text) "
        "before it is scored: the Rotten Tomatoes corpus is mostly the movie snippets",
    )
    eval_batch_size: int = Field(64, ge=1, description="held-out MLM rows per batch")
    device: Literal["cpu", "cuda"] = Field(
        "cpu", description="where the in-process distillation and fine-tuning run"
    )
    threads: int = Field(0, ge=0, description="torch intra-op threads (0: torch's default)")
    out: str | None = Field(None, description="JSON result path (default: WORK/quality.json)")

    @field_validator("curve", mode="before")
    @classmethod
    def _number_list(cls, v: Any) -> Any:
        return [float(x) for x in v.split(",") if x.strip()] if isinstance(v, str) else v

    @field_validator("pool_methods", mode="before")
    @classmethod
    def _method_list(cls, v: Any) -> Any:
        return [m.strip() for m in v.split(",") if m.strip()] if isinstance(v, str) else v

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
