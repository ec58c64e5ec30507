"""Configs of the teacher stage: ``distil logits`` (cache sparse teacher logits) and
``distil teacher adapt`` (give a headless encoder an MLM head)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from distil.config import StageConfig
from distil.packaged import PACKAGED_TEACHER
from distil.teacher.masking import MASKING_VERSION


class LogitsConfig(StageConfig):
    PATH_FIELDS = ("input", "cache_root", "teacher")

    input: str = Field(description="URL of a committed prepared dataset (stage 1 output)")
    cache_root: str = Field(
        description="URL under which caches live; this run's cache is <cache_root>/<key>/"
    )
    teacher: str = Field(
        description="teacher checkpoint: HF …ForMaskedLM dir of a supported family (bert, roberta, "
        "xlm-roberta; path or fsspec URL) or "
        "packaged:NAME; must have an MLM head (see `distil teacher adapt`)"
    )
    allow_pickle: bool = Field(
        False, description="allow loading pickle .bin weights (unsafe: runs code from the file)"
    )
    seed: int = Field(0, description="masking seed; with (seq_id, copy) it fixes every choice")
    copies: int = Field(1, ge=1, le=255, description="masked copies per sequence (dup factor)")
    mask_prob: float = Field(0.15, gt=0, lt=1, description="fraction of maskable tokens chosen")
    mask_token_frac: float = Field(0.8, ge=0, le=1, description="chosen -> [MASK]")
    random_token_frac: float = Field(0.1, ge=0, le=1, description="chosen -> random token")
    mlm_smoothing: float = Field(
        0.7,
        ge=0,
        description="DistilBERT smoothing: choose positions with prob ~ count**-s "
        "(manifest token_counts); 0 = uniform",
    )
    sparsity: Literal["topk", "sampled"] = Field(
        "topk",
        description="topk: k highest log-probs; sampled: k draws from the teacher "
        "distribution, stored as unique ids + counts (unbiased, Anshumann et al. 2025)",
    )
    k: int = Field(8, ge=1, le=255, description="top-k size, or number of draws when sampled")
    sample_temperature: float = Field(
        2.0,
        gt=0,
        description="sampled mode: temperature the ids are drawn at; the distil run's KD "
        "temperature (2.0 = distil/default), which it must equal unless the run passes "
        "--allow-temperature-mismatch",
    )
    kd_temperatures: list[float] = Field(
        [1.0, 2.0],
        description="KD temperatures the cache serves: per position it stores the teacher's "
        "log-partition at each (not for 1.0, which needs none), so KD at T sees the teacher's "
        "tail mass; a distil run at another T is refused. List or comma-separated",
    )
    kd_positions: Literal["masked", "all"] = Field(
        "masked",
        description="positions the cache holds teacher targets for: masked (the MLM positions) "
        "or all (every non-pad position of the masked input, as DistilBERT distils; ~7x the "
        "target bytes and teacher head compute). The MLM loss stays on the masked positions (key)",
    )
    hidden_sketch_dims: int = Field(
        32,
        ge=0,
        description="d > 0: also store, per non-pad token, an int8 sketch R @ h of the teacher's "
        "last hidden state (R: a fixed seeded Gaussian [d, hidden]) so cached distillation has "
        "the cosine loss (alpha_cos, on by default in distil runs); 0: none. At most the teacher's hidden size; <= 64 "
        "recommended (d bytes per token, key)",
    )
    unit_rows: int = Field(
        1024,
        ge=1,
        description="prepared sequences per unit of work: one cache file + marker each; bounds "
        "what a task or teacher actor holds (x copies), whatever the shard size (key: layout)",
    )
    row_group_rows: int = Field(
        256, ge=1, description="cache rows per Parquet row group (readers seek by them; key)"
    )
    batch_size: int = Field(64, ge=1, description="sequences per teacher forward pass")
    compile: bool = Field(
        False,
        description="device cuda: torch.compile the teacher's encoder, every batch padded to "
        "batch_size rows and one of three lengths (seq_len/4, seq_len/2, seq_len), so a few "
        "graphs serve the whole job (compiled at each actor's start; bench/gpu_check.py "
        "measures the gain). No effect on CPU",
    )
    num_actors: int = Field(1, ge=1, description="teacher replicas (Ray actor pool size)")
    actors_per_gpu: int = Field(
        2,
        ge=1,
        description="on CUDA: teacher replicas sharing each GPU, so one replica's CPU work "
        "(batch building, top-k results to Arrow) overlaps another's GPU batches; the pool "
        "has num_actors x actors_per_gpu replicas on min(num_actors, GPUs) GPUs",
    )
    num_cpus_per_actor: float = Field(
        0.5, gt=0, description="logical CPUs per CPU actor (keep < cores so readers schedule)"
    )
    num_cpus_per_task: float = Field(
        0.5, gt=0, description="logical CPUs per masking / commit task (Ray Data CPU tasks)"
    )
    torch_threads: int = Field(
        0, ge=0, description="torch intra-op threads per CPU actor (0: torch default)"
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto",
        description="cuda: one GPU per actor, an error if the cluster has none after "
        "gpu_wait_s; auto: GPUs if the cluster has some now, else CPU (logged as a warning)",
    )
    gpu_wait_s: float = Field(
        300.0,
        ge=0,
        description="device cuda: seconds to wait for GPU nodes to join (an autoscaling "
        "cluster starts its GPU group at zero) before failing",
    )

    @field_validator("kd_temperatures", mode="before")
    @classmethod
    def _temperature_list(cls, v: Any) -> Any:
        """``--kd-temperatures 2`` and ``--kd-temperatures 1,2`` as well as a YAML list."""
        if isinstance(v, int | float):
            return [v]
        if isinstance(v, str):
            return [s for s in v.replace("[", "").replace("]", "").split(",") if s.strip()]
        return v

    @field_validator("kd_temperatures")
    @classmethod
    def _positive_sorted(cls, v: list[float]) -> list[float]:
        if not v or any(t <= 0 for t in v):
            raise ValueError(f"kd_temperatures must be a non-empty list of T > 0, not {v}")
        return sorted(set(v))

    @model_validator(mode="after")
    def _fractions(self) -> LogitsConfig:
        if self.mask_token_frac + self.random_token_frac > 1:
            raise ValueError("mask_token_frac + random_token_frac must be <= 1")
        return self

    def masking(self) -> dict[str, Any]:
        """The masking config as it enters the cache key."""
        return {
            "version": MASKING_VERSION,
            "seed": self.seed,
            "copies": self.copies,
            "mask_prob": self.mask_prob,
            "mask_token_frac": self.mask_token_frac,
            "random_token_frac": self.random_token_frac,
            "mlm_smoothing": self.mlm_smoothing,
        }

    def layout(self) -> dict[str, Any]:
        """The file layout as it enters the cache key (and the manifest)."""
        return {"unit_rows": self.unit_rows, "row_group_rows": self.row_group_rows}

    def sparsity_spec(self) -> dict[str, Any]:
        """The sparsity config as it enters the cache key (and the manifest)."""
        spec: dict[str, Any] = {"mode": self.sparsity, "k": self.k}
        if self.sparsity == "sampled":
            spec["temperature"] = self.sample_temperature
        spec["kd_temperatures"] = list(self.kd_temperatures)
        # which positions the targets are for, and the hidden-state sketch (seeded by ``seed``)
        spec["kd_positions"] = self.kd_positions
        spec["hidden_sketch_dims"] = self.hidden_sketch_dims
        if self.hidden_sketch_dims:
            spec["hidden_sketch_seed"] = self.seed
        return spec


class AdaptConfig(StageConfig):
    RENAMED = {"warmup_frac": "warmup_fraction"}  # the fine-tune's name (until the next release)
    IMPLICIT_BEFORE = {"max_grad_norm": 1.0}  # the clip adaptation hard-coded before
    input: str = Field(description="URL of a committed prepared dataset to train on")
    output: str = Field(description="URL for the adapted HF …ForMaskedLM directory")
    teacher: str = Field(
        PACKAGED_TEACHER, description="checkpoint to adapt (encoder; an MLM head is optional)"
    )
    allow_pickle: bool = Field(False, description="allow loading pickle .bin weights (unsafe)")
    token_budget: int = Field(
        100_000,
        ge=1,
        description="stop after this many input tokens (non-padding) were trained "
        "(default: ~3.5 min on 2 shared cores for the packaged MiniLM)",
    )
    batch_size: int = Field(
        8, ge=1, description="sequences per optimizer step (small: more updates per budget)"
    )
    lr: float = Field(5e-4, gt=0, description="peak AdamW learning rate (head and encoder)")
    warmup_fraction: float = Field(
        0.06, ge=0, lt=1, description="share of steps with linear LR warm-up"
    )
    lr_schedule: Literal["linear", "cosine", "constant"] = Field(
        "linear",
        description="learning rate after the warm-up: linear or cosine decay to 0 at the token "
        "budget, or constant (scripts/experiments/adapt_curve.py measures them)",
    )
    train_layers: int = Field(
        -1,
        ge=-1,
        description="train only the top N encoder layers (+ head; embeddings and lower layers "
        "frozen: a cheaper backward); -1: the whole encoder",
    )
    head_warmup_tokens: int = Field(
        0,
        ge=0,
        description="train only the new MLM head for the first N tokens (a random head's "
        "gradients then reach the encoder later), then head + encoder; 0: together from the start",
    )
    weight_decay: float = Field(
        0.01, ge=0, description="AdamW weight decay (not on biases/LayerNorm)"
    )
    max_grad_norm: float = Field(
        1.0, gt=0, description="clip the global grad norm of the trained parameters to this"
    )
    mask_prob: float = Field(0.15, gt=0, lt=1, description="fraction of maskable tokens masked")
    train_word_embeddings: bool = Field(
        False,
        description="also train the word embeddings (tied to the head's output layer); off: "
        "they stay as pretrained and each step skips a [vocab, hidden] gradient + AdamW update",
    )
    seed: int = Field(0, description="seed for masking, shuffling and head initialisation")
    heldout_fraction: float = Field(
        0.05, gt=0, lt=1, description="held-out split by seq_id (distil.data.shards.is_heldout)"
    )
    eval_sequences: int = Field(256, ge=1, description="held-out sequences to evaluate on")
    max_seq_len: int = Field(
        128, ge=8, description="train on at most this many tokens per sequence (speed on CPU)"
    )
    num_cpus_per_task: float = Field(
        0.5, gt=0, description="logical CPUs per masking / commit task (Ray Data CPU tasks)"
    )
    torch_threads: int = Field(
        1,
        ge=0,
        description="torch intra-op threads (0: torch default). 1 is safest on a shared machine: "
        "2 threads on 2 busy cores measured 12x slower per step; use 2 on an idle 2-core box",
    )
    device: Literal["cpu", "cuda"] = Field(
        "cpu", description="where the teacher trains (this process; cuda: its first GPU)"
    )
    log_every: int = Field(10, ge=1, description="log loss every N steps")
