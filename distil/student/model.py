"""DistilBERT-recipe student: the teacher with every other layer removed.

The student is the teacher's own class (``BertForMaskedLM``, ``RobertaForMaskedLM``,
``XLMRobertaForMaskedLM``: ``distil.family``) with fewer encoder layers, not a
``DistilBertForMaskedLM``, as DistilRoBERTa was made: its module names are the teacher's, so
initialising it is an exact state-dict copy (no renaming table to get wrong), it reads the
teacher's tokenizer unchanged, and every loader downstream (``AutoModelForMaskedLM``,
``AutoModelForSequenceClassification``, ``pipeline("fill-mask")``) takes it as is.
DistilBERT's architectural differences (no token-type embeddings, no pooler) save <1% of the
parameters; the speed-up comes from halving the depth, which we keep.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

from distil.family import mlm_attrs


def layer_spread(teacher_layers: int, student_layers: int) -> list[int]:
    """Which teacher layers initialise the student: evenly spread, first and last always kept.

    ``round(i * (n - 1) / (k - 1))`` (halves rounded up) reproduces DistilBERT's choice for
    12 -> 6 (``[0, 2, 4, 7, 9, 11]``); 6 -> 3 gives ``[0, 3, 5]``, 4 -> 2 gives ``[0, 3]``.
    """
    if not 1 <= student_layers <= teacher_layers:
        raise ValueError(
            f"student_layers must be in 1..{teacher_layers} (teacher depth), got {student_layers}"
        )
    if student_layers == 1:
        return [teacher_layers - 1]
    step = (teacher_layers - 1) / (student_layers - 1)
    return [math.floor(i * step + 0.5) for i in range(student_layers)]


def build_student(teacher: Any, student_layers: int | None = None) -> Any:
    """A model of the teacher's class with ``student_layers`` (default: half the teacher's)
    copied from the teacher's layers at ``layer_spread``; embeddings, pooler and MLM head copied
    unchanged."""
    mlm_attrs(teacher)  # refuses a model of another family, or one without a masked-LM head
    n_teacher = teacher.config.num_hidden_layers
    k = student_layers or max(1, n_teacher // 2)
    picked = layer_spread(n_teacher, k)
    cfg = copy.deepcopy(teacher.config)
    cfg.num_hidden_layers = k
    student = type(teacher)(cfg)
    t_state = teacher.state_dict()
    s_state = {}
    prefix = f"{teacher.base_model_prefix}.encoder.layer."
    for name in student.state_dict():
        src = name
        if name.startswith(prefix):
            idx, rest = name[len(prefix) :].split(".", 1)
            src = f"{prefix}{picked[int(idx)]}.{rest}"
        s_state[name] = t_state[src].detach().clone()
    missing, unexpected = student.load_state_dict(s_state, strict=True)
    assert not missing and not unexpected
    student.tie_weights()  # decoder weight shares the word embeddings, as in the teacher
    student.config.distil = {"teacher_layers": n_teacher, "init_layers": picked}
    return student


class MaskedLMForDistillation(nn.Module):
    """The forward pass distillation needs, as one module so DDP sees (and syncs) all of it.

    It runs the MLM head only at masked positions (``labels != -100``): at 15% masking that is
    ~7x less head compute than the full ``[B, L, vocab]`` logits, and it is exactly the set of
    positions the cached teacher targets describe (row-major order, same as ``target_ids``).
    A ``kd_positions: all`` cache has targets at every non-pad position: then ``positions``
    (its batch's ``kd_positions`` mask) selects those rows instead, and the MLM rows are the
    masked ones among them (``mlm_rows``).
    """

    def __init__(self, model: Any):
        super().__init__()
        self.model = model
        self.encoder_attr, self.head_attr = mlm_attrs(model)  # names, so state-dict keys stay

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        index: torch.Tensor | None = None,
        unpadded: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits ``[N, vocab]`` at ``positions`` (bool [B, L]; default the masked ones), or at
        ``index`` (long [S]: flat ``b * L + l`` positions of a fixed-shape batch, gathered
        without a host sync), last hidden states ``[B, L, H]``). ``unpadded``: the caller knows
        every row is full, so no attention mask is built (SDPA then runs its flash kernel)."""
        hidden = getattr(self.model, self.encoder_attr)(
            input_ids=input_ids, attention_mask=encoder_mask(self.model, attention_mask, unpadded)
        )[0]
        if index is not None:
            kept = hidden.reshape(-1, hidden.shape[-1]).index_select(0, index)
        else:
            kept = hidden[labels != -100 if positions is None else positions]
        return getattr(self.model, self.head_attr)(kept), hidden


def encoder_mask(model: Any, attention_mask: torch.Tensor, unpadded: bool) -> torch.Tensor | None:
    """The attention mask to hand the encoder without a host sync: none for a batch the host
    knows is unpadded; for SDPA an already expanded ``[B, 1, 1, L]`` boolean mask (transformers
    checks a 2-D mask with ``.all()`` on every forward, a device-to-host sync); else as is."""
    if unpadded:
        return None
    if model.config._attn_implementation == "sdpa":
        return attention_mask.bool()[:, None, None, :]
    return attention_mask


def mlm_rows(labels: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor | None:
    """Which rows of logits taken at ``positions`` are masked (bool ``[N]``); None when they
    were taken at the masked positions (all of them are)."""
    return None if positions is None else labels[positions] != -100
