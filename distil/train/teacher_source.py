"""Where a distillation step's teacher targets come from, behind one interface: a committed
teacher-logit cache (:class:`CachedTeacher`, ``mode: cached``) or the frozen teacher run on every
batch (:class:`OnlineTeacher`, ``mode: online``). ``DistilRecipe`` holds one of them
(:func:`teacher_source`) and asks it, not the mode, for the batches, their shape, the loss
options and the teacher's outputs of a batch."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from distil.data.readers.stream import ReadPosition
from distil.student.model import encoder_mask
from distil.teacher.load import LoadedTeacher, mlm_parts
from distil.train.config import DistilConfig
from distil.train.data import BatchShape, PreparedBatches
from distil.train.identity import (
    cached_sketch,
    check_cache_teacher,
    check_cache_temperature,
    check_sketch_size,
    teacher_ref,
)

Batches = Iterator[dict[str, torch.Tensor]]


class TeacherSource:
    """What the recipe needs from the teacher side of distillation. ``teacher`` is the frozen
    ``…ForMaskedLM`` the step runs (None when the targets are read, not computed); ``reader``
    and ``eval_reader`` give the training and held-out batches (``iter_batches(batch_size,
    ReadPosition, start_batch=)``: a ``TeacherCache`` or ``PreparedBatches``)."""

    runs_teacher = False  # does every step run the teacher (and so need its MLM head)?
    teacher: Any = None
    reader: Any = None
    eval_reader: Any = None

    def __init__(self, cfg: DistilConfig):
        self.cfg = cfg

    def open(self) -> None:
        """Before the teacher loads: open what the targets are read from, and check it."""

    def needs_teacher(self, resuming: bool) -> bool:
        """Whether the teacher must be loaded: to run it, or to initialise a new student."""
        return self.runs_teacher or not resuming

    def check_teacher(self, loaded: LoadedTeacher) -> None:
        """Refuse a loaded teacher these targets were not made with."""

    def attach(self, teacher: Any, device: torch.device) -> None:
        """The loaded teacher, once the student is built from it (kept only if it runs)."""

    def to_device(self, device: torch.device, student_hidden: int) -> None:
        """Move what the loss reads to the training device, checked against the student."""

    def compile(self, backend: str) -> None:
        """``torch.compile`` what runs every step (fixed shapes, like the student's step)."""

    def objective_options(self) -> dict[str, Any]:
        """``DistillationObjective`` keyword arguments that come from the targets."""
        return {}

    def open_data(self) -> None:
        """Open the training and held-out data (when they are not the targets' own)."""

    def batch_shape(self, batch_size: int) -> BatchShape:
        raise NotImplementedError

    def train_batches(self, batch_size: int, position: ReadPosition, start_batch: int) -> Batches:
        """One epoch of a rank's training batches (``position``) from ``start_batch`` on."""
        return self.reader.iter_batches(batch_size, position, start_batch=start_batch)

    def eval_batches(self, batch_size: int, position: ReadPosition) -> Batches:
        return self.eval_reader.iter_batches(batch_size, position)

    def targets(self, batch: dict[str, Any]) -> tuple[torch.Tensor | None, ...]:
        """The teacher's outputs the objective takes besides ``batch`` (none when the batch
        carries them)."""
        return ()

    def _shape(
        self, manifest: dict[str, Any], mask_prob: float, all_positions: bool, sequences: Any
    ) -> BatchShape:
        """The fixed shape of every training micro-batch, from the input's manifest (whose
        token count says whether every sequence fills ``seq_len``: then no batch needs an
        attention mask)."""
        seq_len = int(manifest["seq_len"])
        tokens = manifest.get("tokens")
        return BatchShape.for_masking(
            self.cfg.batch_size,
            seq_len,
            mask_prob,
            int(manifest["special_ids"]["pad"]),
            all_positions,
            unpadded=bool(sequences) and tokens == sequences * seq_len,
        )


class CachedTeacher(TeacherSource):
    """KD targets read from a committed teacher cache (its masked batches, top-k or sampled
    logits and optional hidden-state sketch); the teacher only initialises a new student."""

    def __init__(self, cfg: DistilConfig):
        super().__init__(cfg)
        self.cache: Any = None
        self.sparsity: dict[str, Any] = {}
        self.sketch: torch.Tensor | None = None  # R of the cache's hidden sketch

    def open(self) -> None:
        from distil.teacher.cache import TeacherCache

        cfg = self.cfg
        self.cache = self.reader = self.eval_reader = TeacherCache(cfg.cache)
        self.sparsity = self.cache.manifest.get("sparsity", {"mode": "topk"})
        check_cache_temperature(
            self.cache.manifest, cfg.cache, cfg.temperature, cfg.allow_temperature_mismatch
        )
        self.sketch = cached_sketch(self.cache, cfg.alpha_cos)

    def check_teacher(self, loaded: LoadedTeacher) -> None:
        cfg = self.cfg
        check_cache_teacher(
            self.cache.manifest,
            cfg.cache,
            teacher_ref(cfg),
            loaded.weights_sha256,
            cfg.allow_teacher_mismatch,
        )

    def to_device(self, device: torch.device, student_hidden: int) -> None:
        if self.sketch is not None:
            self.sketch = self.sketch.to(device)
            check_sketch_size(self.sketch, student_hidden, self.cfg.cache)

    def objective_options(self) -> dict[str, Any]:
        return {
            "sparsity": self.sparsity,
            "kd_temperatures": self.cache.kd_temperatures,
            "sketch": self.sketch,
        }

    def batch_shape(self, batch_size: int) -> BatchShape:
        manifest = self.cache.manifest
        return self._shape(
            manifest,
            float(manifest["masking"]["mask_prob"]),
            self.cache.kd_positions == "all",
            manifest.get("sequences"),
        )


class OnlineTeacher(TeacherSource):
    """The frozen teacher runs on every dynamically masked batch of the prepared shards
    (the baseline: full-vocabulary KD and a full-width cosine term)."""

    runs_teacher = True

    def __init__(self, cfg: DistilConfig):
        super().__init__(cfg)
        self.encoder: Any = None  # the step's (possibly compiled) teacher encoder
        self.head: Any = None
        self.train_data: PreparedBatches | None = None
        self.eval_data: PreparedBatches | None = None

    def attach(self, teacher: Any, device: torch.device) -> None:
        # frozen: bf16 weights on CUDA (no per-step autocast casts of its fp32 weights)
        dtype = torch.bfloat16 if device.type == "cuda" and self.cfg.bf16 else torch.float32
        self.teacher = teacher.to(device, dtype).eval().requires_grad_(False)
        # the training step's teacher encoder (eval runs the eager one on its ragged batches)
        self.encoder, self.head = mlm_parts(self.teacher)

    def compile(self, backend: str) -> None:
        self.encoder = torch.compile(self.encoder, dynamic=False, backend=backend)

    def open_data(self) -> None:
        cfg = self.cfg
        self.train_data = self.reader = PreparedBatches(cfg.data, mlm_probability=cfg.mask_prob)
        self.eval_data = self.eval_reader = PreparedBatches(cfg.data, mlm_probability=cfg.mask_prob)

    def batch_shape(self, batch_size: int) -> BatchShape:
        manifest = self.train_data.manifest
        return self._shape(manifest, self.cfg.mask_prob, False, manifest.get("rows"))

    def targets(self, batch: dict[str, Any]) -> tuple[torch.Tensor | None, ...]:
        """(teacher logits at the target rows or None without a KD term, teacher hidden states
        or None without a cosine term). The frozen teacher runs in its own dtype (bf16 weights
        on CUDA) outside the step's autocast: under it, layer norms would run in float32 and
        every matmul re-check casts."""
        cfg = self.cfg
        with torch.no_grad(), torch.autocast(batch["input_ids"].device.type, enabled=False):
            t_hidden = self.encoder(
                input_ids=batch["input_ids"],
                attention_mask=encoder_mask(
                    self.teacher, batch["attention_mask"], batch.get("unpadded", False)
                ),
            )[0]
            t_logits = None
            if cfg.alpha_ce > 0:
                rows = t_hidden.reshape(-1, t_hidden.shape[-1]).index_select(
                    0, batch["target_index"]
                )
                t_logits = self.head(rows)
        return t_logits, t_hidden if cfg.alpha_cos > 0 else None


def teacher_source(cfg: DistilConfig) -> TeacherSource:
    """The source ``cfg.mode`` names."""
    return OnlineTeacher(cfg) if cfg.mode == "online" else CachedTeacher(cfg)
