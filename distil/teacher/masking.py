"""Static masking: which positions of a sequence the teacher is asked about, fixed once.

Every random decision is a pure function of ``(seed, seq_id, copy, position)``: a counter-based
generator (SplitMix64) whose state is hashed from ``(seed, seq_id, copy, use)`` and whose i-th
output belongs to position i. So a whole batch is masked with a few numpy operations, and the
result for one sequence does not depend on which other sequences share its batch, on padding,
on the unit of work or on the machine — a rerun or a resumed run masks exactly the same
positions, and the cache only has to store the result, not the random state.

BERT recipe: 15% of the maskable tokens (``round``, at least one per non-empty sequence); of
those 80% become ``[MASK]``, 10% a random token (uniform over the vocabulary less its special
tokens: a random ``<s>`` or ``[CLS]`` mid-sequence is no word), 10% stay as they are. Positions are the
``n_mask`` smallest keys ``-log(u) / w`` (an exponential race, Efraimidis & Spirakis 2006): with
``w = 1`` a uniform subset, with DistilBERT's smoothing ``w = count(token) ** -smoothing`` the
same distribution as drawing one by one without replacement with probability ``∝ w``, so frequent
tokens such as "the" are masked less often and rare ones more.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

# Part of the cache key (LogitsConfig.masking()); bump when the algorithm changes.
# 2: counter-based per-position streams (1 was one PCG64 generator per sequence).
# 3: random replacements never draw a special token.
MASKING_VERSION = 3

# Uses of the random streams of one (seed, seq_id, copy); never share draws.
SELECT, SAMPLE, ACTION, RANDOM_ID = 0, 1, 2, 3

_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_U64 = (1 << 64) - 1


def _mix(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser (a bijection of uint64 with full avalanche), in place on ``z``."""
    z ^= z >> np.uint64(30)
    z *= _M1
    z ^= z >> np.uint64(27)
    z *= _M2
    z ^= z >> np.uint64(31)
    return z


def stream_states(seed: int, seq_ids: np.ndarray, copies: np.ndarray, use: int) -> np.ndarray:
    """uint64 state of the stream of each ``(seed, seq_id, copy, use)`` row."""
    seq = np.atleast_1d(np.asarray(seq_ids)).astype(np.int64).view(np.uint64)
    cop = np.broadcast_to(np.asarray(copies, dtype=np.int64), seq.shape).astype(np.uint64)
    with np.errstate(over="ignore"):
        h = _mix(np.full(seq.shape, np.uint64(int(seed) & _U64)) + _GAMMA)
        h = _mix((h ^ seq) + _GAMMA)
        return _mix((h ^ ((cop << np.uint64(8)) | np.uint64(use))) + _GAMMA)


def uniforms(states: np.ndarray, counters: np.ndarray) -> np.ndarray:
    """Float64 uniforms in [0, 1): output ``counters[..]`` of each row's stream (broadcast
    ``states[:, None]`` against ``counters``)."""
    with np.errstate(over="ignore"):
        z = np.asarray(counters).astype(np.uint64) + np.uint64(1)
        z *= _GAMMA
        z = _mix(z + states[:, None])
        z >>= np.uint64(11)
    return z.astype(np.float64) * (1.0 / (1 << 53))


def selection_weights(token_counts: np.ndarray | None, smoothing: float) -> np.ndarray | None:
    """Per-vocab-id weights ``count ** -smoothing`` (None: uniform). Unseen ids count as 1."""
    if token_counts is None or smoothing == 0:
        return None
    counts = np.maximum(np.asarray(token_counts, dtype=np.float64), 1.0)
    return counts ** (-float(smoothing))


@dataclass(frozen=True)
class MaskedSequence:
    """One masked copy of one sequence (unpadded)."""

    input_ids: np.ndarray  # [length] ids the model sees
    positions: np.ndarray  # [n] sorted positions that were selected
    labels: np.ndarray  # [n] original ids at ``positions``


@dataclass(frozen=True)
class MaskedBatch:
    """Masked copies of a batch of sequences, as padded matrices."""

    input_ids: np.ndarray  # [B, L] int64 ids the model sees (columns >= length untouched)
    selected: np.ndarray  # [B, L] bool, the masked positions
    labels: np.ndarray  # [N] original ids at the selected positions, row-major

    def positions(self) -> tuple[np.ndarray, np.ndarray]:
        """(offsets [B + 1], positions [N]): row r's positions are ``pos[off[r]:off[r+1]]``."""
        counts = self.selected.sum(axis=1)
        offsets = np.zeros(len(counts) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        return offsets, np.nonzero(self.selected)[1]


def mask_batch(
    ids: np.ndarray,
    lengths: np.ndarray,
    seq_ids: np.ndarray,
    copies: np.ndarray | int,
    *,
    seed: int,
    special_ids: np.ndarray,
    mask_id: int,
    vocab_size: int,
    mask_prob: float = 0.15,
    mask_token_frac: float = 0.8,
    random_token_frac: float = 0.1,
    weights: np.ndarray | None = None,
) -> MaskedBatch:
    """Mask row r of ``ids`` [B, L] (first ``lengths[r]`` ids) as ``(seq_ids[r], copies[r])``."""
    ids = np.asarray(ids, dtype=np.int64)
    b, width = ids.shape
    lengths = np.asarray(lengths, dtype=np.int64).reshape(b)
    seq_ids = np.asarray(seq_ids, dtype=np.int64).reshape(b)
    copies = np.broadcast_to(np.asarray(copies, dtype=np.int64), (b,))
    cols = np.arange(width)
    candidate = (cols[None, :] < lengths[:, None]) & ~np.isin(ids, special_ids)
    n_cand = candidate.sum(axis=1)
    n_mask = np.rint(mask_prob * n_cand).astype(np.int64)
    if mask_prob > 0:  # every sequence with content teaches something
        n_mask = np.where(n_cand > 0, np.maximum(n_mask, 1), 0)
    # Exponential race: the n_mask smallest keys -log(u) / w (u in (0, 1]).
    u = 1.0 - uniforms(stream_states(seed, seq_ids, copies, SELECT), cols)
    key = -np.log(u)
    if weights is not None:
        key = key / weights[ids]
    key = np.where(candidate, key, np.inf)
    # Selected: keys up to the row's n_mask-th smallest. A function of the row's own keys only
    # (columns past its length are inf), so neither padding nor batch mates change it; a tie at
    # the threshold (two equal 53-bit keys in one row) would select one more.
    kth = np.take_along_axis(np.sort(key, axis=1), np.maximum(n_mask - 1, 0)[:, None], axis=1)
    selected = (key <= kth) & (n_mask[:, None] > 0)
    # At the selected positions only: one uniform decides mask / random / keep, another draws
    # the random id (each from its own stream, counter = position).
    rows, pos = np.nonzero(selected)
    action = uniforms(stream_states(seed, seq_ids[rows], copies[rows], ACTION), pos[:, None])[:, 0]
    rand = uniforms(stream_states(seed, seq_ids[rows], copies[rows], RANDOM_ID), pos[:, None])
    masked = ids.copy()
    to_mask = action < mask_token_frac
    to_random = (action >= mask_token_frac) & (action < mask_token_frac + random_token_frac)
    masked[rows[to_mask], pos[to_mask]] = mask_id
    random_ids = non_special_ids(rand[:, 0], special_ids, vocab_size)
    masked[rows[to_random], pos[to_random]] = random_ids[to_random]
    return MaskedBatch(masked, selected, ids[rows, pos])


def non_special_ids(u: np.ndarray, special_ids: np.ndarray, vocab_size: int) -> np.ndarray:
    """Uniforms ``u`` in [0, 1) -> ids uniform over ``range(vocab_size)`` less ``special_ids``:
    an index among the non-special ids, shifted past each special id at or below it (ascending,
    so every shift is seen), without building the (up to 250k-long) list of allowed ids."""
    specials = np.unique(np.asarray(special_ids, dtype=np.int64))
    specials = specials[(specials >= 0) & (specials < vocab_size)]
    ids = (u * (vocab_size - len(specials))).astype(np.int64)
    for s in specials:
        ids += ids >= s
    return ids


def mask_sequence(
    input_ids: np.ndarray, length: int, *, seq_id: int, copy: int, **kwargs: Any
) -> MaskedSequence:
    """Mask one sequence (``mask_batch`` of one row; same keyword arguments). ``input_ids`` may
    be padded; only the first ``length`` ids are used."""
    ids = np.asarray(input_ids[:length], dtype=np.int64)
    out = mask_batch(ids[None, :], [length], [seq_id], copy, **kwargs)
    return MaskedSequence(out.input_ids[0], np.flatnonzero(out.selected[0]), out.labels)


def sample_uniforms(
    seed: int, seq_ids: np.ndarray, copies: np.ndarray, positions: np.ndarray, k: int
) -> np.ndarray:
    """[N, k] uniforms for drawing k sparse targets at each of N masked positions (one entry per
    position: its row's seq_id and copy, and the position), from the ``SAMPLE`` stream."""
    states = stream_states(seed, seq_ids, copies, SAMPLE)
    counters = np.asarray(positions, dtype=np.int64)[:, None] * k + np.arange(k)[None, :]
    return uniforms(states, counters)


@dataclass
class MaskingParams:
    """Everything ``mask_batch`` needs besides the sequences (built from the stage config and
    the prepared manifest; picklable, so Ray tasks get it as is)."""

    seed: int
    copies: int
    mask_prob: float
    mask_token_frac: float
    random_token_frac: float
    special_ids: np.ndarray
    mask_id: int
    vocab_size: int
    weights: np.ndarray | None

    @classmethod
    def from_config(cls, masking: dict[str, Any], manifest: dict[str, Any]) -> MaskingParams:
        special = manifest["special_ids"]
        counts = manifest.get("token_counts")
        if masking["mlm_smoothing"] > 0 and not counts:
            raise ValueError("mlm_smoothing > 0 needs token_counts in the prepared manifest")
        return cls(
            seed=masking["seed"],
            copies=masking["copies"],
            mask_prob=masking["mask_prob"],
            mask_token_frac=masking["mask_token_frac"],
            random_token_frac=masking["random_token_frac"],
            special_ids=np.array(sorted(set(special.values())), dtype=np.int64),
            mask_id=int(special["mask"]),
            vocab_size=int(manifest["vocab_size"]),
            weights=selection_weights(
                np.asarray(counts) if counts else None, masking["mlm_smoothing"]
            ),
        )

    def _kwargs(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "special_ids": self.special_ids,
            "mask_id": self.mask_id,
            "vocab_size": self.vocab_size,
            "mask_prob": self.mask_prob,
            "mask_token_frac": self.mask_token_frac,
            "random_token_frac": self.random_token_frac,
            "weights": self.weights,
        }

    def mask_batch(
        self, ids: np.ndarray, lengths: np.ndarray, seq_ids: np.ndarray, copies: np.ndarray | int
    ) -> MaskedBatch:
        return mask_batch(ids, lengths, seq_ids, copies, **self._kwargs())

    def mask(self, ids: np.ndarray, length: int, seq_id: int, copy: int) -> MaskedSequence:
        return mask_sequence(ids, length, seq_id=seq_id, copy=copy, **self._kwargs())
