"""Distillation losses (DistilBERT: ``alpha_ce * KD + alpha_mlm * MLM + alpha_cos * cosine``).

All of them work on the masked positions only, in the row-major order the teacher cache uses
(``student_logits`` is ``[N, vocab]`` with ``N = (labels != -100).sum()``). ``kd_dense`` also
serves sentence classification (``[N, num_labels]``), so there is one KD formula in the project.

KD is scaled by ``T**2`` (Hinton et al.): the soft-target gradients shrink as ``1/T**2``, so the
scale keeps the KD term's weight comparable to the MLM term whatever the temperature.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F


def kd_dense(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float,
    reduction: Literal["mean", "none"] = "mean",
) -> torch.Tensor:
    """Reference KD: ``T**2 * KL(p_T || q_T)`` over the full last dimension (vocabulary, or the
    classes of ``[N, C]`` classification logits), averaged over positions.

    ``reduction="none"`` returns the ``[N]`` per-row terms instead: the sentiment fine-tuning
    mixes KD and cross-entropy per example (only rows the teacher cache covers get KD), so it
    needs the rows before they are averaged.
    """
    t = temperature
    log_p = F.log_softmax(teacher_logits.float() / t, dim=-1)
    log_q = F.log_softmax(student_logits.float() / t, dim=-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)
    if reduction == "none":
        return t * t * kl
    if reduction != "mean":
        raise ValueError(f"reduction must be 'mean' or 'none', not {reduction!r}")
    return t * t * kl.mean() if kl.numel() else student_logits.sum() * 0.0


def kd_topk(
    student_logits: torch.Tensor,
    target_ids: torch.Tensor,
    target_logprobs: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """KD on a cached top-k support: the teacher at temperature T renormalised over its ``K``
    kept ids, against the student's full-vocabulary log-probs at those ids.

    With ``K = vocab`` this is exactly ``kd_dense``. Padding slots in ``target_ids`` must carry
    ``target_logprobs = -inf`` (they get zero teacher mass).
    """
    t = temperature
    log_p = F.log_softmax(target_logprobs.float() / t, dim=-1)  # renormalised over K
    log_q = F.log_softmax(student_logits.float() / t, dim=-1).gather(-1, target_ids)
    p = log_p.exp()
    kl = (p * (log_p - log_q)).nan_to_num(0.0).sum(-1)
    return t * t * kl.mean() if kl.numel() else student_logits.sum() * 0.0


def kl_coarse(
    student_logits: torch.Tensor, target_ids: torch.Tensor, target_logprobs: torch.Tensor
) -> torch.Tensor:
    """KL(teacher || student) at T = 1 between the two distributions coarsened to
    ``{K cached ids, everything else}``, averaged over positions (an evaluation metric).

    Uses the cached (full-vocabulary) teacher log-probs as they are, so it is 0 when the student
    equals the teacher, never exceeds the full KL (log-sum inequality), and equals it at K = vocab.
    The renormalised ``kd_topk`` cannot serve here: a flat teacher's top-k renormalised is far
    from the teacher itself.
    """
    log_p = target_logprobs.float()
    log_q = F.log_softmax(student_logits.float(), dim=-1).gather(-1, target_ids)
    p = log_p.exp()
    support = (p * (log_p - log_q)).nan_to_num(0.0).sum(-1)
    p_rest = (1.0 - p.sum(-1)).clamp_min(1e-12)
    q_rest = (1.0 - log_q.exp().masked_fill(p == 0, 0.0).sum(-1)).clamp_min(1e-12)
    kl = support + p_rest * (p_rest.log() - q_rest.log())
    return kl.mean() if kl.numel() else student_logits.sum() * 0.0


def kd_sampled(
    student_logits: torch.Tensor,
    target_ids: torch.Tensor,
    target_logprobs: torch.Tensor,
    target_counts: torch.Tensor,
    temperature: float,
    sample_temperature: float | None = None,
) -> torch.Tensor:
    """Sampled-support KD (Anshumann et al., 2025): ids drawn from the teacher, kept with counts.

    The empirical distribution ``w = counts / sum(counts)`` of ids drawn from ``p_T`` makes
    ``sum_k w_k * (log p_T(x_k) - log q_T(x_k))`` an unbiased estimate of ``KL(p_T || q_T)``.
    The cache stores ``log p`` at T = 1; ``log p_T = log p / T - log Z_T`` with ``Z_T`` a constant
    of the teacher, so we drop ``log Z_T`` (exact for T = 1): the gradient is unbiased for any T,
    the value is KL up to that constant.

    If the ids were drawn at ``sample_temperature != temperature``, the counts are reweighted by
    ``p_T / p_s`` (self-normalised per position: consistent, not unbiased).
    """
    t = temperature
    w = target_counts.float()
    if sample_temperature is not None and sample_temperature != t:
        log_ratio = target_logprobs.float() * (1.0 / t - 1.0 / sample_temperature)
        w = w * (log_ratio - log_ratio.masked_fill(w == 0, -torch.inf).amax(-1, keepdim=True)).exp()
    w = w / w.sum(-1, keepdim=True).clamp_min(1e-12)
    log_q = F.log_softmax(student_logits.float() / t, dim=-1).gather(-1, target_ids)
    teacher_term = (target_logprobs.float() / t).nan_to_num(0.0, neginf=0.0)
    est = (w * (teacher_term - log_q)).sum(-1)
    return t * t * est.mean() if est.numel() else student_logits.sum() * 0.0


def mlm_loss(student_logits: torch.Tensor, masked_labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the student on the original ids of the masked positions (``[N]``)."""
    if masked_labels.numel() == 0:
        return student_logits.sum() * 0.0
    return F.cross_entropy(student_logits.float(), masked_labels)


def cosine_loss(
    student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """``mean(1 - cos(h_s, h_t))`` over non-padding positions (DistilBERT's cosine term; it
    aligns the directions of the last hidden states, so hidden sizes must match)."""
    keep = attention_mask.bool()
    s = student_hidden[keep].float()
    t = teacher_hidden[keep].float()
    if s.numel() == 0:
        return student_hidden.sum() * 0.0
    return (1.0 - F.cosine_similarity(s, t, dim=-1)).mean()
