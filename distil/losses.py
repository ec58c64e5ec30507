"""Distillation losses (DistilBERT: ``alpha_ce * KD + alpha_mlm * MLM + alpha_cos * cosine``).

The KD and MLM losses work on the rows of ``student_logits`` ``[N, vocab]``, in the row-major
order the teacher cache uses: the masked positions (``N = (labels != -100).sum()``), or every
non-pad position for KD from a ``kd_positions: all`` cache. The cosine terms work on every
non-pad position. ``kd_dense`` also
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


def teacher_logprobs_at(
    target_logprobs: torch.Tensor, temperature: float, log_partition: torch.Tensor | None
) -> torch.Tensor:
    """The teacher's log-probs at ``T`` on the cached ids, normalised over the full vocabulary.

    The cache stores ``log p_1`` (T = 1) and, per temperature it serves, the log-partition
    ``c_T = log Σ_v p_1(v)^(1/T)`` (``[N]``): then ``log p_T = log p_1 / T - c_T``. Without
    ``c_T`` only T = 1 can be rebuilt (``c_1 = 0``): the tail mass at T is not in the K values.
    """
    lp = target_logprobs.float()
    if log_partition is None:
        if temperature != 1.0:
            raise ValueError(
                f"the teacher at T={temperature} needs its log-partition at that temperature "
                "(batch 'target_logz' of a cache built with it in --kd-temperatures)"
            )
        return lp
    return lp / temperature - log_partition.float().unsqueeze(-1)


def kl_rest_bucket(
    student_logits: torch.Tensor,
    target_ids: torch.Tensor,
    teacher_logp: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """Per-row ``KL(P || Q)`` over ``K + 1`` buckets: the K cached ids and one "rest" bucket
    holding everything else, for both teacher (``teacher_logp``: its full-vocabulary log-probs
    at T on the ids, ``-inf`` in padding slots) and student (log-softmax at T over the vocab).

    This is the exact KL of both distributions coarsened to those buckets: 0 when the student
    equals the teacher, at most the full KL (log-sum inequality), equal to it at K = vocab. The
    student's rest is a logsumexp over the ids not kept (no ``1 - Σ`` cancellation), so a tail
    near 0 or near 1 keeps finite values and gradients.
    """
    log_q_all = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_q = log_q_all.gather(-1, target_ids)
    real = torch.isfinite(teacher_logp)
    p = teacher_logp.exp().masked_fill(~real, 0.0)
    support = (p * (teacher_logp.masked_fill(~real, 0.0) - log_q)).sum(-1)
    kept = torch.zeros_like(log_q_all).scatter_add_(-1, target_ids, real.float()) > 0
    has_rest = kept.sum(-1) < log_q_all.shape[-1]  # K = vocab: no rest bucket at all
    # Student rest: log1p(-kept mass) while that mass is small (exact to float32 rounding even
    # for a near-uniform teacher, where the rest is ~1), else a logsumexp over the ids not kept
    # (no 1 - sum cancellation when the rest is ~0; an e^-80 floor keeps it and its gradient
    # finite when nothing is left out). Both branches stay finite, so where() passes no NaN.
    s_q = log_q.exp().masked_fill(~real, 0.0).sum(-1)
    floor = torch.full_like(log_q_all[:, :1], -80.0)
    lse_rest = torch.logsumexp(torch.cat([log_q_all.masked_fill(kept, -torch.inf), floor], -1), -1)
    log_q_rest = torch.where(s_q < 0.5, torch.log1p(-s_q.clamp(max=0.5)), lse_rest)
    s_p = p.sum(-1)
    p_rest = torch.where(has_rest, (1.0 - s_p).clamp_min(0.0), 0.0)
    log_p_rest = torch.log1p(-s_p.clamp(max=1.0 - 1e-7))
    rest = torch.where(p_rest > 0, p_rest * (log_p_rest - log_q_rest), 0.0)
    return support + rest


def kd_topk(
    student_logits: torch.Tensor,
    target_ids: torch.Tensor,
    target_logprobs: torch.Tensor,
    temperature: float,
    log_partition: torch.Tensor | None = None,
) -> torch.Tensor:
    """KD on a cached top-k support with its tail: ``T**2 * KL`` over the K cached ids plus one
    "rest" bucket (``kl_rest_bucket``), averaged over positions.

    ``log_partition`` is the cache's ``c_T`` at this temperature (``[N]``; not needed at
    T = 1). The teacher's rest bucket is its tail mass at T, the mass T = 2 exists to
    transfer; renormalising over the K ids instead would push all student mass into them.
    With ``K = vocab`` this is exactly ``kd_dense``. Padding slots carry ``-inf`` log-probs.
    """
    t = temperature
    log_p = teacher_logprobs_at(target_logprobs, t, log_partition)
    kl = kl_rest_bucket(student_logits, target_ids, log_p, t)
    return t * t * kl.mean() if kl.numel() else student_logits.sum() * 0.0


def kl_coarse(
    student_logits: torch.Tensor, target_ids: torch.Tensor, target_logprobs: torch.Tensor
) -> torch.Tensor:
    """KL(teacher || student) at T = 1 coarsened to ``{K cached ids, rest}``, averaged over
    positions: the held-out metric of a top-k cache (the same formula as the ``kd_topk``
    loss at T = 1: 0 for a student equal to the teacher, a lower bound of the full KL)."""
    return kd_topk(student_logits, target_ids, target_logprobs, 1.0)


def kd_sampled(
    student_logits: torch.Tensor,
    target_ids: torch.Tensor,
    target_logprobs: torch.Tensor,
    target_counts: torch.Tensor,
    temperature: float,
    sample_temperature: float | None = None,
    log_partition: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sampled-support KD (Anshumann et al., 2025): ids drawn from the teacher, kept with counts.

    The empirical distribution ``w = counts / sum(counts)`` of ids drawn from ``p_T`` makes
    ``sum_k w_k * (log p_T(x_k) - log q_T(x_k))`` an unbiased estimate of ``KL(p_T || q_T)``,
    with ``log p_T = log p_1 / T - c_T`` (``log_partition`` = the cache's ``c_T``, ``[N]``).
    Without ``c_T`` (a teacher constant) the value is KL + ``c_T``; the gradient is the same.

    Draws made at ``sample_temperature != temperature`` (only with the recipe's
    ``allow_temperature_mismatch``) are reweighted by ``p_T / p_s``, self-normalised per
    position over the K draws: consistent, but biased and high-variance for small K.
    """
    t = temperature
    w = target_counts.float()
    if sample_temperature is not None and sample_temperature != t:
        log_ratio = target_logprobs.float() * (1.0 / t - 1.0 / sample_temperature)
        w = w * (log_ratio - log_ratio.masked_fill(w == 0, -torch.inf).amax(-1, keepdim=True)).exp()
    w = w / w.sum(-1, keepdim=True).clamp_min(1e-12)
    log_q = F.log_softmax(student_logits.float() / t, dim=-1).gather(-1, target_ids)
    log_p = target_logprobs.float() / t
    if log_partition is not None:
        log_p = log_p - log_partition.float().unsqueeze(-1)
    est = (w * (log_p.nan_to_num(0.0, neginf=0.0) - log_q)).sum(-1)
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
    return _cosine_distance(student_hidden[keep], teacher_hidden[keep], student_hidden)


def sketch_cosine_loss(
    student_hidden: torch.Tensor,
    attention_mask: torch.Tensor,
    projection: torch.Tensor,
    teacher_sketch: torch.Tensor,
) -> torch.Tensor:
    """The cosine term from a teacher cache: ``mean(1 - cos(R h_s, s_t))`` over non-padding
    positions, ``R`` = ``projection`` [d, H] and ``s_t`` = ``teacher_sketch`` [n_tokens, d] the
    cached ``R h_t`` (any scale: int8 values, ``distil.teacher.sketch``) in row-major order.
    A random projection keeps cosines to ~1/sqrt(d) and R = identity gives ``cosine_loss``."""
    keep = attention_mask.bool()
    if projection.shape[1] != student_hidden.shape[-1]:
        raise ValueError(
            f"the cache's hidden-state sketch projects hidden size {projection.shape[1]}, but "
            f"the student's is {student_hidden.shape[-1]}: the cosine term needs the teacher's "
            "hidden size (a student built from its layers); pass --alpha-cos 0 otherwise"
        )
    s = student_hidden[keep].float() @ projection.to(student_hidden.device, torch.float32).T
    return _cosine_distance(s, teacher_sketch, student_hidden)


def _cosine_distance(s: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``mean(1 - cos)`` over matching rows of ``s`` and ``t`` (0, with a graph, for none)."""
    if s.numel() == 0:
        return like.sum() * 0.0
    return (1.0 - F.cosine_similarity(s.float(), t.float(), dim=-1)).mean()
