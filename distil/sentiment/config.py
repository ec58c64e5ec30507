"""Configs for stage 4a: ``distil finetune`` (Ray Train) and ``distil pool`` (Apache Beam); the
score stage's is ``distil.score.config``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from distil.config import RayTrainOptions, StageConfig

DEFAULT_LABELS = ["negative", "positive"]


class LabelledDataConfig(StageConfig):
    """Which labelled rows a stage trains on and how they split: shared by ``distil finetune``
    and ``distil pool`` (whose pool must be made from exactly the rows the fine-tune trains on)."""

    train: str = Field(
        ...,
        description="your labelled reviews: a JSONL/CSV/Parquet file, or a directory of them. No "
        "default: the sample movie snippets are used only by `distil demo` (locally, name them: "
        ".distil/samples/reviews/movie_snippets.jsonl, built by `distil data samples --output "
        ".distil/samples`)",
    )
    text_column: str = Field("text", description="column holding the review text")
    label_column: str = Field(
        "label", description="column holding the label (0/1 ints, booleans or label names)"
    )
    id_column: str | None = Field(
        "id",
        description="column with a stable row id (used for the train/validation split); rows "
        "are numbered by position when the column is absent",
    )
    labels: list[str] = Field(
        default_factory=lambda: list(DEFAULT_LABELS),
        description="class names, index = class id (written to the model's id2label)",
    )
    validation_fraction: float = Field(
        0.1, description="share of rows held out for validation (hash of the row id)"
    )
    max_train_examples: int | None = Field(
        None,
        description="use only N training rows (a CPU time budget): the first N in the order of "
        "a hash of the row id, a fixed sample with both classes whatever the file's order",
    )
    max_validation_examples: int | None = Field(
        None, description="evaluate on at most N validation rows"
    )
    exclude: list[str] = Field(
        default_factory=list,
        description="evaluation sets (files with --text-column): a training, validation or pool "
        "row whose normalised text is in one of them is dropped and counted, so no model trains "
        "or early-stops on them",
    )

    @field_validator("exclude", mode="before")
    @classmethod
    def _exclude_list(cls, v):
        return _url_list(v)


def _url_list(v):
    # `--pool s3://b/pool/` (one URL), `--pool a,b` or a YAML list
    if isinstance(v, str):
        return [u.strip() for u in v.split(",") if u.strip()]
    return v


class FinetuneConfig(LabelledDataConfig, RayTrainOptions):
    """Fine-tune an encoder (BERT, RoBERTa or XLM-RoBERTa family) with a sequence-classification head on labelled reviews."""

    # the distil stage's names (the old ones work until the next release)
    RENAMED = {"grad_clip": "max_grad_norm", "ray_storage_path": "storage_path"}

    PATH_FIELDS = (
        "model",
        "train",
        "output",
        "latest_pointer",
        "teacher_cache",
        "write_teacher_cache",
        "storage_path",
        "pool",
        "exclude",
    )

    model: str = Field(
        "packaged:all-minilm-l6-v2",
        description="model to fine-tune: an HF directory (BERT / RoBERTa / XLM-R family) as path/URL (the distilled "
        "student, a teacher) or packaged:all-minilm-l6-v2",
    )
    output: str = Field(..., description="URL under which the fine-tuned model dir is written")
    run_name: str | None = Field(
        None, description="model dir name under --output (default: finetune-<UTC timestamp>)"
    )
    max_length: int = Field(128, description="tokens per review (longer ones are truncated)")
    batch_size: int = Field(32, description="examples per optimizer step per worker")
    epochs: float = Field(
        1.0, description="passes over the training rows and --pool rows (may be fractional)"
    )
    max_steps: int | None = Field(
        None, description="stop after this many optimizer steps (caps --epochs)"
    )
    lr: float = Field(5e-5, description="peak AdamW learning rate")
    weight_decay: float = Field(0.01, description="AdamW weight decay (not on biases/LayerNorm)")
    warmup_fraction: float = Field(0.1, description="share of steps with linear LR warm-up")
    max_grad_norm: float = Field(1.0, description="clip the global grad norm to this value")
    seed: int = Field(0, description="seed for the head init and the data order")
    bf16: bool = Field(True, description="bf16 autocast on GPU (no effect on CPU)")
    checkpoint_every: int = Field(
        200,
        ge=1,
        description="report a checkpoint (model, optimizer, scheduler, step) to Ray Train every "
        "N steps and at the end; a restarted worker group resumes from the latest",
    )
    torch_threads: int | None = Field(
        None, description="intra-op threads per worker (default: torch's own choice)"
    )
    storage_path: str | None = Field(
        None,
        description="Ray Train run state and checkpoints (URL; needed on multi-node clusters); "
        "the run is named after --run-name, so resubmitting a name resumes it. Default: "
        "~/ray_results on the driver",
    )
    teacher_cache: str | None = Field(
        None,
        description="task-level KD: URL of cached teacher class logits (distil finetune "
        "--write-teacher-cache, keyed by sha256 of the text); adds the KD term",
    )
    kd_alpha: float = Field(0.5, description="weight of the KD term (1 - alpha on the labels)")
    kd_temperature: float = Field(2.0, description="softmax temperature of the KD term")
    write_teacher_cache: str | None = Field(
        None,
        description="after training, cache this model's class logits over the training and "
        "validation texts at this URL (to teach a student, or for distil score --teacher-cache)",
    )
    latest_pointer: str | None = Field(
        None,
        description="URL of the small JSON naming the newest model (default: OUTPUT/latest.json)",
    )
    log_every: int = Field(20, description="log training loss every N steps")
    eval_every: int | None = Field(
        None,
        ge=1,
        description="evaluate on the validation rows every N steps (the curve goes into the "
        "metrics, Ray Train and MLflow); unset: once, at the end",
    )
    early_stopping_patience: int | None = Field(
        None,
        ge=1,
        description="with --eval-every: stop once this many evaluations in a row have not beaten "
        "the best validation accuracy (unset: train every step)",
    )
    select: Literal["best", "last"] = Field(
        "best",
        description="which weights are exported: the evaluation with the best validation "
        "accuracy (with --eval-every), or the last step's",
    )
    length_buckets: bool = Field(
        False,
        description="batch reviews of similar length together (each epoch's order is still a "
        "seeded shuffle, of windows of 50 batches sorted by length): less padding, ~1.5x "
        "faster on CPU for short reviews",
    )
    pool: list[str] = Field(
        default_factory=list,
        description="unlabelled texts for task distillation (files or dirs of JSONL/CSV/Parquet "
        "with --text-column, e.g. `distil pool` output): trained on by the KD term "
        "alone, so every one must be in --teacher-cache",
    )

    @field_validator("pool", mode="before")
    @classmethod
    def _pool_list(cls, v):
        return _url_list(v)

    @model_validator(mode="after")
    def _early_stopping_needs_evaluations(self):
        if self.early_stopping_patience is not None and self.eval_every is None:
            raise ValueError("early_stopping_patience needs eval_every (evaluations to compare)")
        if self.pool and not self.teacher_cache:
            raise ValueError(
                "pool rows have no labels: they are trained on the teacher's logits alone, so "
                "--pool needs --teacher-cache"
            )
        return self


class PoolConfig(LabelledDataConfig):
    """Build a task-distillation pool from labelled reviews and label it with the fine-tuned
    teacher (Apache Beam: the scoring pipeline), into a task teacher cache."""

    PATH_FIELDS = ("train", "teacher", "encoder", "prose", "output", "exclude")

    teacher: str = Field(
        ...,
        description="the fine-tuned teacher classifier (a distil finetune model dir or its "
        "latest.json pointer) that labels the pool",
    )
    output: str = Field(
        ...,
        description="root URL: the pool goes to OUTPUT/pool-<fingerprint>/ and the teacher's "
        "logits to OUTPUT/teacher-logits-<fingerprint>/ (a rerun finds both and does nothing)",
    )
    multiple: float = Field(
        4.0, ge=0, description="augmented pool rows per training row (pool size budget)"
    )
    methods: list[str] = Field(
        default_factory=lambda: ["synonym"],
        description="augmentation steps applied in order to each copy: synonym, delete, shuffle "
        "(comma-separated or a YAML list)",
    )
    replace_prob: float = Field(
        0.3, gt=0, le=1, description="synonym: share of words replaced by a near word"
    )
    neighbours: int = Field(8, ge=1, description="synonym: near words to draw a replacement from")
    encoder: str | None = Field(
        None,
        description="model whose input word embeddings give the near words (default: the "
        "teacher's)",
    )
    prose: list[str] = Field(
        default_factory=list,
        description="plain-text files or dirs (.txt) whose sentences join the pool, unlabelled "
        "(e.g. the sample corpus's prose)",
    )
    prose_rows: int = Field(0, ge=0, description="prose sentences added to the pool")
    seed: int = Field(0, description="seed of the augmentations")
    max_length: int = Field(128, description="tokens per text when the teacher labels it")
    batch_size: int = Field(512, description="rows per RunInference batch (labelling)")
    torch_threads: int | None = Field(
        None, description="intra-op torch threads per Beam worker process (labelling)"
    )
    runner: str = Field("FnApiRunner", description="Beam runner of the labelling pipeline")
    beam_args: list[str] = Field(
        default_factory=list, description="Beam pipeline options (YAML list), passed on unchecked"
    )

    @field_validator("methods", "prose", mode="before")
    @classmethod
    def _lists(cls, v):
        return _url_list(v)
