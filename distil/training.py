"""The training skeleton every loop of distil uses: distillation (``distil.train.recipe``),
fine-tuning (``distil.sentiment.finetune``) and teacher adaptation (``distil.teacher.adapt``).

What is here is what a training loop is made of whatever it trains: which parameters decay, the
optimizer and its learning-rate schedule (``transformers.get_scheduler``), gradient clipping,
the autocast policy, the DDP wrap, the per-step seed, the optimizer/scheduler state a checkpoint
holds, and the FLOP count behind MFU. The loops keep what differs between them (their data,
loss and evaluation).

A module of the shared library (layer 0), not of ``train/``: the fine-tune (``sentiment/``) and
adaptation (``teacher/``) stages import it too, and stage libraries do not import each other.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from transformers import get_scheduler

NamedParams = Iterable[tuple[str, torch.nn.Parameter]]

# called by a recipe at its log, evaluation and checkpoint steps with (step, metrics,
# save_checkpoint?): the Ray job reports there (and tracks), and checkpoints when asked
ReportFn = Callable[[int, dict[str, Any], bool], None]


class OptimizerOptions(Protocol):
    """The optimisation fields every training stage's config has, under one name each."""

    lr: float
    weight_decay: float
    max_grad_norm: float


class Recipe:
    """One DDP rank's training run, free of Ray (``world_size`` 1 in a plain process):
    ``setup`` (fresh, or from a checkpoint dir) -> ``train`` -> ``save_checkpoint``.
    ``distil.jobs._ray_train.recipe_worker`` runs one per Ray Train worker."""

    def __init__(
        self, cfg: Any, *, rank: int = 0, world_size: int = 1, device: torch.device | str = "cpu"
    ) -> None:
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        self.device = torch.device(device)
        self.step = self.start_step = 0
        self.train_seconds = 0.0

    def setup(self, checkpoint_dir: str | None = None) -> None:
        raise NotImplementedError

    def train(self, report: ReportFn | None = None) -> Any:
        raise NotImplementedError

    def save_checkpoint(self, directory: str) -> None:
        raise NotImplementedError


# transformers' name of each ``lr_schedule`` a config may name (warm-up always first)
SCHEDULES = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}


def decays(name: str, param: torch.nn.Parameter) -> bool:
    """The one weight-decay rule: matrices decay; biases, norms (any 1-D tensor) and anything
    named LayerNorm do not."""
    return param.ndim >= 2 and "LayerNorm" not in name


def param_groups(named_params: NamedParams, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW parameter groups by :func:`decays`, each in the order given."""
    decay, no_decay = [], []
    for name, p in named_params:
        (decay if decays(name, p) else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


@dataclass
class Optimization:
    """AdamW + its LR schedule + gradient clipping over one set of parameters: one optimizer
    step, and the state a checkpoint saves and a resumed run loads."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    params: list[torch.nn.Parameter]  # clipped together, in the model's order
    max_grad_norm: float

    def step(self) -> torch.Tensor:
        """Clip the gradients' global norm to ``max_grad_norm``, step the optimizer and the
        schedule; returns the norm before clipping (a device tensor: no host sync)."""
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        return grad_norm

    @property
    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """From a checkpoint's ``state_dict()`` keys (other keys in ``state`` are ignored)."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])


def optimization(
    named_params: NamedParams,
    opts: OptimizerOptions,
    *,
    warmup_steps: int,
    total_steps: int,
    device: torch.device,
    schedule: str = "linear",
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    first_step: int = 0,
) -> Optimization:
    """AdamW (one fused kernel for every update on CUDA) at ``opts.lr`` over ``named_params``
    grouped by :func:`param_groups` (``opts.weight_decay``), clipped at ``opts.max_grad_norm``,
    with ``schedule`` (a key of ``SCHEDULES``): linear warm-up from 0 over ``warmup_steps``, then
    decay to 0 at ``total_steps`` (or constant). ``first_step`` > 0 starts the schedule that many
    steps in (stretched by as many), so the first update is not taken at an LR of 0: adaptation
    trains a fresh head from its first step."""
    named = list(named_params)
    if schedule not in SCHEDULES:
        raise ValueError(f"lr schedule {schedule!r}: use one of {', '.join(SCHEDULES)}")
    optimizer = torch.optim.AdamW(
        param_groups(named, opts.weight_decay),
        lr=opts.lr,
        betas=betas,
        eps=eps,
        fused=device.type == "cuda",
    )
    scheduler = get_scheduler(
        SCHEDULES[schedule],
        optimizer,
        num_warmup_steps=warmup_steps,
        num_training_steps=total_steps + first_step,
    )
    with warnings.catch_warnings():  # advancing before any update is the point here
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)`")
        for _ in range(first_step):
            scheduler.step()
    return Optimization(optimizer, scheduler, [p for _, p in named], opts.max_grad_norm)


def autocast(device: torch.device, bf16: bool) -> torch.autocast:
    """The training step's autocast: bf16 on CUDA when asked, off on the CPU (where bf16
    matmuls are slower than fp32)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16 and device.type == "cuda")


def seed_step(seed: int, step: int, rank: int) -> None:
    """Reseed torch before a step: dropout depends on (seed, step, rank) only, so a run resumed
    from a checkpoint replays the masks the uninterrupted run would have drawn."""
    torch.manual_seed(seed * 1_000_003 + step * 1_009 + rank)


def wrap_ddp(
    module: torch.nn.Module, device: torch.device, *, bf16_grads: bool = False
) -> torch.nn.parallel.DistributedDataParallel:
    """``module`` in DDP. Gradients live in the all-reduce buckets (no copy in and out of them);
    no buffer is broadcast each step (the models trained here have none that training changes);
    ``bf16_grads`` all-reduces them in bf16 (half the bytes on the wire)."""
    ddp = torch.nn.parallel.DistributedDataParallel(
        module,
        device_ids=[device.index] if device.type == "cuda" else None,
        gradient_as_bucket_view=True,
        broadcast_buffers=False,
    )
    if bf16_grads:
        from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

        ddp.register_comm_hook(None, default_hooks.bf16_compress_hook)
    return ddp


def ddp_of(model: torch.nn.Module) -> torch.nn.parallel.DistributedDataParallel | None:
    """The DDP wrapper of a training model, through ``torch.compile``'s wrapper (the compiled
    forward runs inside DDP's own forward, and ``no_sync`` is DDP's); None without DDP."""
    inner = getattr(model, "_orig_mod", model)  # torch.compile's OptimizedModule
    return inner if isinstance(inner, torch.nn.parallel.DistributedDataParallel) else None


def grad_sync(model: torch.nn.Module, sync: bool) -> contextlib.AbstractContextManager:
    """Where a micro-batch's backward must not all-reduce (all but the last of a gradient
    accumulation): DDP's ``no_sync``; otherwise (or without DDP) nothing."""
    ddp = ddp_of(model)
    return ddp.no_sync() if ddp is not None and not sync else contextlib.nullcontext()


# ---------------------------------------------------------------------------- FLOPs and MFU

# Dense bf16 tensor-core peaks (no sparsity) from NVIDIA's data sheets, matched in this order
# against torch.cuda.get_device_name() (so "H100 PCIe" before "H100", "L40S" before "L4").
PEAK_BF16_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # SXM (e.g. "NVIDIA H100 80GB HBM3")
    ("H200", 989.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
    ("A10", 125.0),
)


def peak_bf16_tflops(device_name: str) -> float | None:
    """The dense bf16 peak of a GPU by its CUDA name; None when not in the table."""
    return next((v for k, v in PEAK_BF16_TFLOPS if k in device_name), None)


def forward_flops(config: Any, tokens: int, positions: int, seq_len: int) -> float:
    """FLOPs of a BERT-shaped encoder's forward over ``tokens`` tokens (sequences of
    ``seq_len``) with the MLM head on ``positions`` rows: 2 x (4H² + 2H·I) per token and layer
    for the matmuls, 4 x H x seq_len per token and layer for attention, 2 x (H² + H·V) per
    head row (transform + decoder). ``config``: the model's HF config."""
    h, v, layers = config.hidden_size, config.vocab_size, config.num_hidden_layers
    per_layer = 4 * h * h + 2 * h * config.intermediate_size
    encoder = 2 * per_layer * layers * tokens + 4 * layers * h * seq_len * tokens
    head = 2 * (h * h + h * v) * positions
    return float(encoder + head)


def train_step_flops(config: Any, tokens: int, positions: int, seq_len: int) -> float:
    """A training step: forward + backward (two forwards' worth) = 3 forwards."""
    return 3.0 * forward_flops(config, tokens, positions, seq_len)


def mfu(flops: float, seconds: float, peak_tflops: float | None) -> float | None:
    """Model FLOPs utilisation: achieved FLOP/s over the peak; None without a peak."""
    if not peak_tflops or seconds <= 0:
        return None
    return flops / seconds / 1e12 / peak_tflops
