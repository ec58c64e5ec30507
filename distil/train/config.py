"""``DistilConfig``: every option of the distillation job (YAML in ``configs/distil/``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from distil.config import RayTrainOptions


class DistilConfig(RayTrainOptions):
    PATH_FIELDS = ("cache", "data", "teacher", "output", "storage_path")
    RENAMED = {"mlm_probability": "mask_prob"}  # the logits and adapt stages' name

    # --- inputs / outputs -------------------------------------------------------------------
    mode: Literal["cached", "online"] = Field(
        "cached",
        description="cached: KD targets from the teacher-logit cache; online: run the teacher "
        "every step on dynamically masked prepared shards (baseline; full-width cosine term)",
    )
    cache: str | None = Field(
        None, description="URL of a committed teacher cache (stage 2 output; cached mode)"
    )
    data: str | None = Field(
        None, description="URL of a committed prepared dataset (stage 1 output; online mode)"
    )
    teacher: str | None = Field(
        None,
        description="teacher model dir/URL or packaged:… ref; default: the one the cache "
        "manifest records",
    )
    allow_teacher_mismatch: bool = Field(
        False,
        description="cached mode: train even if the teacher's weights hash differs from the one "
        "the cache manifest records (the student would start from another model than the one "
        "whose logits it learns)",
    )
    allow_temperature_mismatch: bool = Field(
        False,
        description="cached mode, sampled cache: train even if its ids were drawn at another "
        "temperature than --temperature (the counts are then importance-reweighted, "
        "self-normalised over K draws: biased and high-variance)",
    )
    output: str = Field(..., description="URL where the exported student (HF dir) is written")
    storage_path: str = Field(
        ..., description="URL for Ray Train run state and checkpoints (s3://… or a local dir)"
    )
    run_name: str | None = Field(
        None,
        description="Ray Train run name under storage_path; resubmitting the same name resumes "
        "from its latest checkpoint (refused if that checkpoint was trained with other settings "
        "or inputs). Default: distil-<fingerprint of the settings and inputs that define the run>",
    )
    # --- student / loss ---------------------------------------------------------------------
    student_layers: int | None = Field(
        None, description="student depth; default half the teacher's layers"
    )
    temperature: float = Field(2.0, gt=0, description="KD softmax temperature T")
    alpha_ce: float = Field(5.0, ge=0, description="weight of the KD (soft-target) loss")
    alpha_mlm: float = Field(2.0, ge=0, description="weight of the MLM loss on masked tokens")
    alpha_cos: float = Field(
        1.0,
        ge=0,
        description="weight of the hidden-state cosine loss; cached mode: from the cache's "
        "hidden-state sketch (distil logits --hidden-sketch-dims N; a cache without one is "
        "refused unless this is 0)",
    )
    mask_prob: float = Field(
        0.15, gt=0, lt=1, description="online mode: fraction of tokens masked (80/10/10)"
    )
    # --- optimisation -----------------------------------------------------------------------
    max_steps: int = Field(1000, ge=1, description="optimizer steps in total (all workers)")
    batch_size: int = Field(32, ge=1, description="sequences per worker per micro-batch")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step")
    lr: float = Field(5e-4, gt=0, description="peak AdamW learning rate")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay (not on bias/LN)")
    warmup_steps: int = Field(100, ge=0, description="linear warm-up steps, then linear decay to 0")
    max_grad_norm: float = Field(5.0, gt=0, description="gradient clipping norm")
    bf16: bool = Field(True, description="bf16 autocast on GPU (no effect on CPU)")
    compile: bool = Field(
        True,
        description="CUDA: torch.compile the student's forward + loss (one graph of fixed "
        "shapes; its compile time is logged and in metrics.json as compile_seconds). No effect "
        "on CPU, where it costs more than it saves at the step sizes that run there",
    )
    ddp_bf16_grads: bool = Field(
        False,
        description="DDP: all-reduce gradients in bf16 (half the bytes on the wire; "
        "torch's bf16_compress_hook) instead of fp32",
    )
    seed: int = Field(0, description="seed for data order, masking and init")
    heldout_fraction: float = Field(
        0.05,
        gt=0,
        lt=1,
        description="held-out fraction by seq_id (distil.data.shards.is_heldout); must match "
        "what the teacher was adapted with so eval is on unseen text",
    )
    # --- evaluation / checkpoints / logging -------------------------------------------------
    eval_every: int = Field(200, ge=1, description="evaluate on the held-out split every N steps")
    eval_batches: int = Field(20, ge=1, description="held-out batches per evaluation")
    checkpoint_every: int = Field(200, ge=1, description="checkpoint every N steps")
    log_every: int = Field(20, ge=1, description="progress line every N steps")
    # --- Ray Train (the rest: ``RayTrainOptions``) ------------------------------------------
    num_workers: int = Field(2, ge=1, description="Ray Train workers (DDP ranks)")

    @model_validator(mode="after")
    def _inputs_for_mode(self) -> DistilConfig:
        if self.mode == "cached" and not self.cache:
            raise ValueError("mode=cached needs --cache (a committed teacher cache URL)")
        if self.mode == "online" and not (self.data and self.teacher):
            raise ValueError("mode=online needs --data (prepared shards) and --teacher")
        return self
