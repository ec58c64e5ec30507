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


# rows per block of the eager vocabulary-wide passes: a block's float32 temporaries stay
# ~31 MB at a 30,522-word vocabulary (compiled, the whole [N, V] is one fused kernel instead)
LOGIT_BLOCK_ROWS = 256


class _LogProbsAtIds(torch.autograd.Function):
    """``log_softmax(logits / T)`` gathered at ``ids`` (float32 ``[N, K]``; ``layout``: the
    ``(T, k)`` of each group of ``k`` consecutive columns), with no vocabulary-wide tensor
    kept beyond the logits themselves: the forward computes each temperature's log-softmax
    block by block of rows and keeps only the gathered values; the backward recomputes the
    softmax block by block and writes one gradient, ``sum_T (scatter(g) - softmax(z / T) *
    sum(g)) / T``. The autograd formulation it replaces wrote, kept and read again a float32
    ``[N, V]`` log-softmax per temperature and made a dense ``[N, V]`` gradient per gather."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, ids: torch.Tensor, layout: tuple):
        n = logits.shape[0]
        block = n if torch.compiler.is_compiling() else LOGIT_BLOCK_ROWS
        columns = _columns_by_temperature(layout)
        out = logits.new_empty(ids.shape, dtype=torch.float32)
        for start in range(0, n, block):
            z = logits[start : start + block].float()
            for t, cols in columns.items():
                log_q = torch.log_softmax(z / t if t != 1.0 else z, -1)
                out[start : start + block, cols] = log_q.gather(
                    -1, ids[start : start + block, cols]
                )
        ctx.save_for_backward(logits, ids)
        ctx.columns = columns
        return out

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        logits, ids = ctx.saved_tensors
        n = logits.shape[0]
        block = n if torch.compiler.is_compiling() else LOGIT_BLOCK_ROWS
        grad = torch.empty_like(logits)
        for start in range(0, n, block):
            rows = slice(start, start + block)
            z = logits[rows].float()
            acc = None
            for t, cols in ctx.columns.items():
                g_t = g[rows, cols].float() / t
                p = torch.softmax(z / t if t != 1.0 else z, -1)
                p = p.mul_(-g_t.sum(-1, keepdim=True)).scatter_add_(-1, ids[rows, cols], g_t)
                acc = p if acc is None else acc.add_(p)
            grad[rows] = acc
        return grad, None, None


def _columns_by_temperature(layout: tuple) -> dict[float, torch.Tensor | slice]:
    """The columns of each temperature in a ``(T, k)`` layout: a slice when they are
    contiguous, else an index tensor."""
    spans: dict[float, list[int]] = {}
    col = 0
    for t, k in layout:
        spans.setdefault(float(t), []).extend(range(col, col + k))
        col += k
    return {
        t: slice(c[0], c[-1] + 1) if c == list(range(c[0], c[-1] + 1)) else torch.tensor(c)
        for t, c in spans.items()
    }


def log_probs_at(
    logits: torch.Tensor, groups: list[tuple[torch.Tensor, float]]
) -> list[torch.Tensor]:
    """``log_softmax(logits / T)`` at ``ids`` (float32 ``[N, K]``) for each ``(ids, T)`` of
    ``groups`` (e.g. the MLM labels at T = 1 and the cached KD ids at T = 2), from one pass over
    the logits per temperature (``_LogProbsAtIds``): the losses on cached targets need the
    student's log-probs at a few ids per row only, never the vocabulary-wide log-softmax."""
    ids = torch.cat([i for i, _ in groups], -1) if len(groups) > 1 else groups[0][0]
    layout = tuple((float(t), i.shape[-1]) for i, t in groups)
    out = _LogProbsAtIds.apply(logits, ids, layout)
    return list(out.split([k for _, k in layout], -1))


def weighted_mean(values: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``values`` [N] over the rows with weight 1 (``weight`` [N] of 0/1: fixed-shape
    batches pad their target rows; None: every row). Stays on the device: the divisor is a
    tensor, so no host sync; 0 (with a graph) when no row counts."""
    if weight is None:
        return values.mean() if values.numel() else values.sum() * 0.0
    w = weight.to(values.dtype)
    return (values * w).sum() / w.sum().clamp_min(1.0)


def kl_rest_bucket(
    student_logits: torch.Tensor,
    target_ids: torch.Tensor,
    teacher_logp: torch.Tensor,
    temperature: float,
    log_q: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-row ``KL(P || Q)`` over ``K + 1`` buckets: the K cached ids and one "rest" bucket
    holding everything else, for both teacher (``teacher_logp``: its full-vocabulary log-probs
    at T on the ids, ``-inf`` in padding slots) and student (its log-softmax at T at the ids:
    ``log_q`` from ``log_probs_at``, when the caller made it together with the MLM loss's).

    This is the exact KL of both distributions coarsened to those buckets: 0 when the student
    equals the teacher, at most the full KL (log-sum inequality), equal to it at K = vocab.
    No vocabulary-wide tensor is built: the student's rest is ``log1p(-kept mass)`` from the K
    gathered values (the real ids of a row are distinct), its kept mass clamped below 1 so a
    student with ~no tail keeps finite values and gradients.
    """
    if log_q is None:
        (log_q,) = log_probs_at(student_logits, [(target_ids, temperature)])
    real = torch.isfinite(teacher_logp)
    p = teacher_logp.exp().masked_fill(~real, 0.0)
    support = (p * (teacher_logp.masked_fill(~real, 0.0) - log_q)).sum(-1)
    has_rest = real.sum(-1) < student_logits.shape[-1]  # K = vocab: no rest bucket at all
    s_q = log_q.exp().masked_fill(~real, 0.0).sum(-1)
    log_q_rest = torch.log1p(-s_q.clamp(max=1.0 - 1e-7))
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
    weight: torch.Tensor | None = None,
    log_q: torch.Tensor | None = None,
) -> torch.Tensor:
    """KD on a cached top-k support with its tail: ``T**2 * KL`` over the K cached ids plus one
    "rest" bucket (``kl_rest_bucket``), averaged over positions (the rows with ``weight`` 1).

    ``log_partition`` is the cache's ``c_T`` at this temperature (``[N]``; not needed at
    T = 1). The teacher's rest bucket is its tail mass at T, the mass T = 2 exists to
    transfer; renormalising over the K ids instead would push all student mass into them.
    With ``K = vocab`` this is exactly ``kd_dense``. Padding slots carry ``-inf`` log-probs.
    """
    t = temperature
    log_p = teacher_logprobs_at(target_logprobs, t, log_partition)
    kl = kl_rest_bucket(student_logits, target_ids, log_p, t, log_q)
    return t * t * weighted_mean(kl, weight)


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
    weight: torch.Tensor | None = None,
    log_q: torch.Tensor | None = None,
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
        top = log_ratio.masked_fill(w == 0, -torch.inf).amax(-1, keepdim=True)
        top = torch.where(torch.isfinite(top), top, 0.0)  # a row with no draws (padding)
        w = w * (log_ratio - top).exp().masked_fill(w == 0, 0.0)
    w = w / w.sum(-1, keepdim=True).clamp_min(1e-12)
    if log_q is None:
        (log_q,) = log_probs_at(student_logits, [(target_ids, t)])
    log_p = target_logprobs.float() / t
    if log_partition is not None:
        log_p = log_p - log_partition.float().unsqueeze(-1)
    est = (w * (log_p.nan_to_num(0.0, neginf=0.0) - log_q)).sum(-1)
    return t * t * weighted_mean(est, weight)


def mlm_loss(
    student_logits: torch.Tensor,
    masked_labels: torch.Tensor,
    log_q: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy of the student on the original ids of the masked positions (``[N]``;
    -100 rows, the padding of a fixed-shape batch, are left out of the mean). ``log_q``: the
    student's log-softmax at each row's label (``[N, 1]``, from ``log_probs_at`` at the
    clamped labels), when the caller made it together with KD's."""
    if masked_labels.numel() == 0:
        return student_logits.sum() * 0.0
    if log_q is None:
        (log_q,) = log_probs_at(student_logits, [(mlm_ids(masked_labels), 1.0)])
    keep = masked_labels.ne(-100)
    nll = -log_q.squeeze(-1)
    return weighted_mean(nll, keep)


def mlm_ids(masked_labels: torch.Tensor) -> torch.Tensor:
    """``[N, 1]`` ids at which ``mlm_loss`` reads the log-probs: each row's label (0 in the
    -100 rows, which the loss leaves out)."""
    return masked_labels.clamp_min(0).unsqueeze(-1)


def cosine_loss(
    student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """``mean(1 - cos(h_s, h_t))`` over non-padding positions (DistilBERT's cosine term; it
    aligns the directions of the last hidden states, so hidden sizes must match). Computed at
    every position and averaged with the mask as weights: no boolean indexing, no host sync."""
    cos = F.cosine_similarity(student_hidden.float(), teacher_hidden.float(), dim=-1)
    return weighted_mean((1.0 - cos).reshape(-1), attention_mask.reshape(-1))


def sketch_cosine_loss(
    student_hidden: torch.Tensor,
    attention_mask: torch.Tensor,
    projection: torch.Tensor,
    teacher_sketch: torch.Tensor,
) -> torch.Tensor:
    """The cosine term from a teacher cache: ``mean(1 - cos(R h_s, s_t))`` over non-padding
    positions, ``R`` = ``projection`` [d, H] and ``s_t`` = ``teacher_sketch`` the cached
    ``R h_t`` (any scale: int8 values, ``distil.teacher.sketch``): ``[B, L, d]`` padded like
    the batch (a fixed-shape batch), or ``[n_tokens, d]`` in row-major order of the non-pad
    positions. A random projection keeps cosines to ~1/sqrt(d) and R = identity gives
    ``cosine_loss``."""
    if projection.shape[1] != student_hidden.shape[-1]:
        raise ValueError(
            f"the cache's hidden-state sketch projects hidden size {projection.shape[1]}, but "
            f"the student's is {student_hidden.shape[-1]}: the cosine term needs the teacher's "
            "hidden size (a student built from its layers); pass --alpha-cos 0 otherwise"
        )
    r = projection.to(student_hidden.device, torch.float32)
    if teacher_sketch.dim() == 3:
        return cosine_loss(student_hidden.float() @ r.T, teacher_sketch, attention_mask)
    keep = attention_mask.bool()
    s = student_hidden[keep].float() @ r.T
    return _cosine_distance(s, teacher_sketch, student_hidden)


def _cosine_distance(s: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``mean(1 - cos)`` over matching rows of ``s`` and ``t`` (0, with a graph, for none)."""
    if s.numel() == 0:
        return like.sum() * 0.0
    return (1.0 - F.cosine_similarity(s.float(), t.float(), dim=-1)).mean()
