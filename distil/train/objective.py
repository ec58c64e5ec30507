"""``DistillationObjective``: the student's forward and the whole distillation loss on one
fixed-shape batch (``distil.train.data.fixed_shape``), as one module, so that

* DDP wraps (and syncs) exactly what has gradients;
* ``torch.compile`` sees forward and loss as one graph (fused elementwise work, no Python
  between kernels), with shapes that never change;
* nothing in it asks the device for a value: target rows are gathered by index, averages are
  weighted by 0/1 slot weights and divided by on-device counts, and the loss parts come back as
  one detached ``[4]`` tensor the training loop reads only at log steps.

The loss is DistilBERT's ``alpha_ce * KD + alpha_mlm * MLM + alpha_cos * cosine``, with the same
formulas as ``distil.losses`` on ragged rows (``tests/train/test_objective.py`` checks loss and
gradients against the ragged computation). KD's teacher side comes from the batch: the cache's
top-k / sampled targets, or (online mode) the teacher's logits at the slots and its hidden
states, computed by the recipe outside this module (the frozen teacher is not DDP's business).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from distil import losses
from distil.student.model import MaskedLMForDistillation

# order of the parts vector
PARTS = ("loss", "loss_mlm", "loss_kd", "loss_cos")


class DistillationObjective(nn.Module):
    def __init__(
        self,
        student: MaskedLMForDistillation,
        *,
        alpha_ce: float,
        alpha_mlm: float,
        alpha_cos: float,
        temperature: float,
        sparsity: dict[str, Any] | None = None,
        kd_temperatures: list[float] | None = None,
        sketch: torch.Tensor | None = None,
    ):
        super().__init__()
        self.student = student
        self.alpha_ce, self.alpha_mlm, self.alpha_cos = alpha_ce, alpha_mlm, alpha_cos
        self.t = float(temperature)
        self.sparsity = sparsity or {"mode": "topk"}
        # the cache column of the log-partition at T (None at T = 1, which needs none)
        temps = kd_temperatures or [1.0]
        self.logz_column = (
            None if self.t == 1.0 else min(range(len(temps)), key=lambda i: abs(temps[i] - self.t))
        )
        if sketch is not None:
            self.register_buffer("sketch", sketch.float(), persistent=False)
        else:
            self.sketch = None

    def enabled_parts(self, online: bool) -> list[str]:
        """The names of the parts this configuration computes (the others stay 0)."""
        names = ["loss"]
        if self.alpha_mlm > 0:
            names.append("loss_mlm")
        if self.alpha_ce > 0:
            names.append("loss_kd")
        if self.alpha_cos > 0 and (online or self.sketch is not None):
            names.append("loss_cos")
        return names

    def forward(
        self,
        batch: dict[str, Any],
        teacher_logits: torch.Tensor | None = None,
        teacher_hidden: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(total loss, detached parts ``[4]`` in ``PARTS`` order) of one fixed-shape batch."""
        logits, hidden = self.student(
            batch["input_ids"],
            batch["attention_mask"],
            index=batch["target_index"],
            unpadded=batch.get("unpadded", False),
        )
        weight = batch["target_weight"]
        zero = logits.new_zeros((), dtype=torch.float32)
        mlm = kd = cos = zero
        # the student's log-probs at the MLM labels (T = 1) and the cached KD ids (T): one
        # pass over the logits per temperature, no vocabulary-wide log-softmax
        cached_kd = self.alpha_ce > 0 and teacher_logits is None
        groups = []
        if self.alpha_mlm > 0:
            groups.append((losses.mlm_ids(batch["target_labels"]), 1.0))
        if cached_kd:
            groups.append((batch["target_ids"], self.t))
        log_q = losses.log_probs_at(logits, groups) if groups else []
        if self.alpha_mlm > 0:
            mlm = losses.mlm_loss(logits, batch["target_labels"], log_q[0])
        if self.alpha_ce > 0:
            if teacher_logits is not None:  # online: the teacher's whole distribution
                rows = losses.kd_dense(logits, teacher_logits, self.t, reduction="none")
                kd = losses.weighted_mean(rows, weight)
            else:
                logz = None
                if self.logz_column is not None:
                    logz = batch["target_logz"][:, self.logz_column]
                if self.sparsity.get("mode") == "sampled":
                    kd = losses.kd_sampled(
                        logits,
                        batch["target_ids"],
                        batch["target_logprobs"],
                        batch["target_counts"],
                        self.t,
                        sample_temperature=self.sparsity.get("temperature"),
                        log_partition=logz,
                        weight=weight,
                        log_q=log_q[-1],
                    )
                else:
                    kd = losses.kd_topk(
                        logits,
                        batch["target_ids"],
                        batch["target_logprobs"],
                        self.t,
                        logz,
                        weight=weight,
                        log_q=log_q[-1],
                    )
        if self.alpha_cos > 0:
            mask = batch["attention_mask"]
            if teacher_hidden is not None:
                cos = losses.cosine_loss(hidden, teacher_hidden, mask)
            elif self.sketch is not None:
                cos = losses.sketch_cosine_loss(hidden, mask, self.sketch, batch["hidden_sketch"])
        total = self.alpha_mlm * mlm + self.alpha_ce * kd + self.alpha_cos * cos
        if self.alpha_mlm == 0 and self.alpha_ce == 0:
            # no term reads the logits: keep the MLM head in the graph with a zero gradient,
            # as DDP expects of every parameter (only then: it is a pass over [N, vocab])
            total = total + logits.sum() * 0.0
        parts = torch.stack([total, mlm, kd, cos]).detach().float()
        return total, parts
