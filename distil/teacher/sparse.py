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

    @property
    def num_positions(self) -> int:
        return self.ids.shape[0]


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
    """Apply a sparsity spec (``{"mode": "topk"|"sampled", "k": K, ...}``) to [N, V] log-probs."""
    if spec["mode"] == "topk":
        return topk(logprobs, spec["k"])
    if spec["mode"] == "sampled":
        if uniforms is None:
            raise ValueError("sampled mode needs uniforms [N, k] from the per-sequence stream")
        return sample(logprobs, uniforms, spec.get("temperature", 1.0))
    raise ValueError(f"unknown sparsity mode {spec['mode']!r} (topk or sampled)")
