"""Per-worker batch sources for the trainer, all yielding the teacher-cache batch format
(``input_ids``, ``attention_mask``, ``labels``, plus cached targets in cached mode).

Each DDP rank reads only its own rows (``rank::world_size``) and every rank gets the same
number of batches, so no rank waits on a collective that another never reaches.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from distil import storage
from distil.data import shards


def mask_tokens(
    input_ids: np.ndarray,
    special_ids: list[int],
    mask_id: int,
    vocab_size: int,
    probability: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """BERT masking: ``probability`` of the non-special tokens are targets; of those 80% become
    [MASK], 10% a random id, 10% stay. Returns (masked input, labels with -100 elsewhere)."""
    ids = input_ids.copy()
    candidates = ~np.isin(ids, special_ids)
    chosen = candidates & (rng.random(ids.shape) < probability)
    labels = np.where(chosen, ids, -100)
    roll = rng.random(ids.shape)
    ids[chosen & (roll < 0.8)] = mask_id
    rand = chosen & (roll >= 0.8) & (roll < 0.9)
    ids[rand] = rng.integers(0, vocab_size, size=int(rand.sum()))
    return ids, labels


class PreparedBatches:
    """Dynamically masked batches from a committed prepared dataset (online mode).

    The rows of this rank's split are loaded once (``input_ids`` as uint16: ~256 B per
    sequence at seq_len 128), reshuffled every epoch with ``(seed, epoch)`` and re-masked with
    ``(seed, epoch, batch)`` — RoBERTa-style dynamic masking, as DistilBERT's own scripts do.
    """

    def __init__(
        self,
        url: str,
        *,
        rank: int = 0,
        world_size: int = 1,
        split: str = "train",
        heldout_fraction: float = 0.05,
        mlm_probability: float = 0.15,
    ):
        self.manifest = shards.open_prepared(url)
        special = self.manifest["special_ids"]
        self.pad_id = special["pad"]
        self.mask_id = special["mask"]
        self.special = [v for v in special.values() if v is not None]
        self.vocab_size = self.manifest["vocab_size"]
        self.mlm_probability = mlm_probability
        rows = []
        for file_url in storage.committed_files(url):
            table = shards.read_table(file_url, columns=["seq_id", "input_ids"])
            ids = shards.input_ids_matrix(table)
            held = shards.is_heldout(table.column("seq_id").to_numpy(), heldout_fraction)
            keep = {"train": ~held, "heldout": held, "all": np.ones_like(held)}[split]
            rows.append(ids[keep])
        seq_len = self.manifest["seq_len"]
        all_rows = np.concatenate(rows) if rows else np.zeros((0, seq_len), np.int64)
        # equal row counts per rank: drop the remainder (< world_size rows)
        per_rank = len(all_rows) // world_size
        self.rows = all_rows[rank * per_rank : (rank + 1) * per_rank]
        if per_rank == 0:
            raise ValueError(
                f"{storage.redact(url)}: {len(all_rows)} {split} rows for {world_size} workers"
            )

    def num_batches(self, batch_size: int) -> int:
        return len(self.rows) // batch_size

    def iter_batches(
        self, batch_size: int, *, seed: int = 0, epoch: int = 0
    ) -> Iterator[dict[str, torch.Tensor]]:
        order = np.random.default_rng([seed, epoch]).permutation(len(self.rows))
        for b in range(self.num_batches(batch_size)):
            rows = self.rows[order[b * batch_size : (b + 1) * batch_size]]
            rng = np.random.default_rng([seed, epoch, b, 1])
            ids, labels = mask_tokens(
                rows, self.special, self.mask_id, self.vocab_size, self.mlm_probability, rng
            )
            yield {
                "input_ids": torch.from_numpy(ids),
                "attention_mask": torch.from_numpy((rows != self.pad_id).astype(np.int64)),
                "labels": torch.from_numpy(labels),
            }


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}
