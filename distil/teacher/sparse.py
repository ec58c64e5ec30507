"""Sparse teacher targets: K (id, log-prob) pairs per masked position instead of a 30k-wide row.

Two modes (the manifest records which, with its parameters):

* ``topk``: the K most likely ids and their log-probs. Cheap and sharp, but biased: the student
  never sees the tail mass.
* ``sampled``: K ids drawn with replacement from the teacher distribution (optionally at a
  temperature), stored as unique ids + draw counts. ``counts / K`` is an unbiased estimate of
  the teacher distribution (Anshumann et al., "Sparse Logit Sampling", ACL 2025), so a
  cross-entropy against it is unbiased in expectation. Unused slots have count 0.

Log-probs are always the teacher's at T=1, normalised over the full vocabulary (log-softmax
before sparsifying), so ``1 - exp(logprobs).sum(-1)`` is the exact mass left off and the KL on
the kept support is exact. They are stored as float16 (|error| <= ~0.01 at log-prob -20).

The teacher at another temperature T needs one more number per position, its log-partition
``c_T = log sum_v p_1(v)^(1/T)`` over the full vocabulary (``log_partitions``): then
``log p_T = log p_1 / T - c_T`` on the kept ids and ``1 - sum exp(...)`` is the tail mass at T,
which the K values alone cannot give. It is computed for each temperature of the spec's
``kd_temperatures`` other than 1 (``c_1 = 0``) and stored as float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class SparseLogits:
    """K sparse targets for each of N positions (row-major over the batch's masked positions)."""

    ids: torch.Tensor  # [N, K] long
    logprobs: torch.Tensor  # [N, K] float32, log-softmax at T=1 over the full vocab
    counts: torch.Tensor | None = None  # [N, K] float32 draw counts (sampled mode only)
    log_partition: torch.Tensor | None = None  # [N, len(stored_temperatures)] float32 c_T
    # [M, d] int8 sketch of the last hidden state at each of the batch's M non-pad tokens
    # (row-major; distil.teacher.sketch), when the cache stores one
    sketch: torch.Tensor | None = None

    @property
    def num_positions(self) -> int:
        return self.ids.shape[0]


def stored_temperatures(spec: dict[str, Any]) -> list[float]:
    """The temperatures whose log-partition a cache with sparsity ``spec`` stores (its
    ``kd_temperatures`` but T = 1, which needs none), in spec order."""
    return [float(t) for t in spec.get("kd_temperatures", [1.0]) if float(t) != 1.0]


def log_partitions(logprobs: torch.Tensor, temperatures: list[float]) -> torch.Tensor:
    """``[N, len(temperatures)]``: ``c_T = logsumexp(log p_1 / T)`` of full-vocab T=1 log-probs."""
    lp = logprobs.float()
    cols = [torch.logsumexp(lp / t, dim=-1) for t in temperatures]
    return torch.stack(cols, -1) if cols else lp.new_zeros((lp.shape[0], 0))


def topk(logprobs: torch.Tensor, k: int) -> SparseLogits:
    """The k largest log-probs per row (ties broken by torch.topk, sorted descending)."""
    values, ids = torch.topk(logprobs, k, dim=-1, sorted=True)
    return SparseLogits(ids=ids, logprobs=values.float())


def sample(
    logprobs: torch.Tensor, uniforms: torch.Tensor, temperature: float = 1.0
) -> SparseLogits:
    """Draw ``K = uniforms.shape[1]`` ids per row by inverse CDF; return unique ids + counts.

    ``uniforms`` are supplied by the caller (drawn from the per-(seq_id, copy) random stream), so
    the draws are reproducible regardless of batch composition or device.
    """
    n, k = uniforms.shape
    q = torch.softmax(logprobs.float() / temperature, dim=-1)
    cdf = torch.cumsum(q, dim=-1)
    u = uniforms.to(cdf.device, torch.float32) * cdf[:, -1:]
    drawn = torch.searchsorted(cdf, u.contiguous()).clamp_(max=q.shape[-1] - 1)
    drawn, _ = torch.sort(drawn, dim=-1)
    # Unique per row into fixed K slots: slot index = number of distinct ids seen so far - 1.
    is_new = torch.ones_like(drawn, dtype=torch.bool)
    is_new[:, 1:] = drawn[:, 1:] != drawn[:, :-1]
    slot = torch.cumsum(is_new.long(), dim=-1) - 1
    ids = torch.zeros_like(drawn)
    ids.scatter_(1, slot, drawn)
    counts = torch.zeros((n, k), dtype=torch.float32, device=drawn.device)
    counts.scatter_add_(1, slot, torch.ones_like(counts))
    return SparseLogits(ids=ids, logprobs=torch.gather(logprobs.float(), 1, ids), counts=counts)


def sparsify(
    logprobs: torch.Tensor, spec: dict[str, Any], uniforms: torch.Tensor | None = None
) -> SparseLogits:
    """Apply a sparsity spec (``{"mode": "topk"|"sampled", "k": K, "kd_temperatures": [...],
    ...}``) to [N, V] log-probs, with the log-partitions of ``stored_temperatures(spec)``."""
    if spec["mode"] == "topk":
        out = topk(logprobs, spec["k"])
    elif spec["mode"] == "sampled":
        if uniforms is None:
            raise ValueError("sampled mode needs uniforms [N, k] from the per-sequence stream")
        out = sample(logprobs, uniforms, spec.get("temperature", 1.0))
    else:
        raise ValueError(f"unknown sparsity mode {spec['mode']!r} (topk or sampled)")
    out.log_partition = log_partitions(logprobs, stored_temperatures(spec))
    return out
