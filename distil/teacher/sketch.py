"""A small sketch of the teacher's last hidden state, so the cosine loss works from the cache.

DistilBERT's cosine term aligns the student's last hidden states with the teacher's, which a
logit cache alone cannot give: storing ``h`` (768 floats per token) would dwarf the targets.
Cosines survive a random projection (Johnson-Lindenstrauss): for a fixed Gaussian ``R``
``[d, H]``, ``cos(R h_s, R h_t)`` tracks ``cos(h_s, h_t)`` to ~``1/sqrt(d)``, and the student's
gradient through ``R h_s`` still pulls its direction towards the teacher's. So the cache keeps
``R h_t`` per non-pad token, and the recipe compares it with ``R h_s``.

Storage is int8 without a per-token scale: the cosine is scale-invariant, so each vector is
scaled by its own max-abs to ``[-127, 127]`` (``quantize``); what is lost is rounding only
(tests/teacher/test_sketch.py measures the cosine error against the float projection).

``R`` is written next to the manifest (``hidden_sketch.npy``, float32 ``[d, H]``), so readers
use the exact matrix the cache was built with and never depend on an RNG's version.
"""

from __future__ import annotations

import io

import numpy as np
import torch

SKETCH_FILE = "hidden_sketch.npy"


def sketch_matrix(seed: int, dims: int, hidden_size: int) -> np.ndarray:
    """The fixed projection ``R`` ``[dims, hidden_size]`` (float32, entries N(0, 1/dims))."""
    if not 1 <= dims <= hidden_size:
        raise ValueError(
            f"hidden_sketch_dims must be in 1..{hidden_size} (the teacher's hidden size), not "
            f"{dims}. Fix: pass --hidden-sketch-dims <= {hidden_size} (<= 64 recommended)"
        )
    rng = np.random.default_rng([seed, dims, hidden_size])
    return (rng.standard_normal((dims, hidden_size)) / np.sqrt(dims)).astype(np.float32)


def quantize(x: torch.Tensor) -> torch.Tensor:
    """int8 ``[N, d]``: each row scaled by its max-abs to ``[-127, 127]`` and rounded (the
    cosine ignores the scale, so none is stored; an all-zero row stays zero)."""
    x = x.float()
    scale = 127.0 / x.abs().amax(-1, keepdim=True).clamp_min(1e-12)
    return torch.round(x * scale).clamp_(-127, 127).to(torch.int8)


def project(hidden: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """``R @ h`` for each row of ``hidden`` ``[N, H]`` -> ``[N, d]`` float32."""
    return hidden.float() @ matrix.to(hidden.device, torch.float32).T


def to_npy(matrix: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, matrix.astype(np.float32), allow_pickle=False)
    return buf.getvalue()


def from_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)
