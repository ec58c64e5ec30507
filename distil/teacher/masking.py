"""Static masking: which positions of a sequence the teacher is asked about, fixed once.

Every decision is a pure function of ``(seed, seq_id, copy)`` (a PCG64 stream seeded with that
triple), so a rerun, a resumed run or another machine masks exactly the same positions, and the
cache only has to store the result, not the random state.

BERT recipe: 15% of the maskable tokens; of those 80% become ``[MASK]``, 10% a random token,
10% stay as they are. DistilBERT's smoothing (``mlm_smoothing``) picks positions with probability
proportional to ``count(token) ** -smoothing`` (corpus counts from the prepared manifest), so
frequent tokens such as "the" are masked less often and rare ones more.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Keep in sync with MaskingConfig; bump when the algorithm changes (it is part of the cache key).
MASKING_VERSION = 1


@dataclass(frozen=True)
class MaskedSequence:
    """One masked copy of one sequence (unpadded)."""

    input_ids: np.ndarray  # [length] ids the model sees
    positions: np.ndarray  # [n] sorted positions that were selected
    labels: np.ndarray  # [n] original ids at ``positions``


def rng_for(seed: int, seq_id: int, copy: int, stream: int = 0) -> np.random.Generator:
    """An independent random stream for one (seed, seq_id, copy) triple.

    ``stream`` separates uses (0: masking, 1: logit sampling) so they never share draws.
    """
    seq_id = int(seq_id)
    return np.random.Generator(
        np.random.PCG64([int(seed), seq_id & 0xFFFFFFFF, seq_id >> 32, int(copy), int(stream)])
    )


def selection_weights(token_counts: np.ndarray | None, smoothing: float) -> np.ndarray | None:
    """Per-vocab-id weights ``count ** -smoothing`` (None: uniform). Unseen ids count as 1."""
    if token_counts is None or smoothing == 0:
        return None
    counts = np.maximum(np.asarray(token_counts, dtype=np.float64), 1.0)
    return counts ** (-float(smoothing))


def mask_sequence(
    input_ids: np.ndarray,
    length: int,
    *,
    seed: int,
    seq_id: int,
    copy: int,
    special_ids: np.ndarray,
    mask_id: int,
    vocab_size: int,
    mask_prob: float = 0.15,
    mask_token_frac: float = 0.8,
    random_token_frac: float = 0.1,
    weights: np.ndarray | None = None,
) -> MaskedSequence:
    """Mask one sequence. ``input_ids`` may be padded; only the first ``length`` ids are used."""
    ids = np.asarray(input_ids[:length], dtype=np.int64)
    rng = rng_for(seed, seq_id, copy)
    candidates = np.flatnonzero(~np.isin(ids, special_ids))
    n_mask = int(round(mask_prob * len(candidates)))
    if len(candidates) and mask_prob > 0:
        n_mask = max(1, n_mask)  # every sequence with content teaches something
    if n_mask == 0:
        empty = np.zeros(0, np.int64)
        return MaskedSequence(ids.copy(), empty, empty)
    if weights is None:
        chosen = rng.choice(candidates, size=n_mask, replace=False)
    else:
        w = weights[ids[candidates]]
        chosen = rng.choice(candidates, size=n_mask, replace=False, p=w / w.sum())
    positions = np.sort(chosen)
    labels = ids[positions]
    # One uniform per position decides mask / random / keep; drawn for all positions at once.
    u = rng.random(n_mask)
    random_ids = rng.integers(0, vocab_size, size=n_mask)
    masked = ids.copy()
    to_mask = u < mask_token_frac
    to_random = (u >= mask_token_frac) & (u < mask_token_frac + random_token_frac)
    masked[positions[to_mask]] = mask_id
    masked[positions[to_random]] = random_ids[to_random]
    return MaskedSequence(masked, positions, labels)
