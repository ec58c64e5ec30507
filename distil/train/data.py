"""Online mode's batch source: dynamically masked batches from a committed prepared dataset,
in the teacher-cache batch format (``input_ids``, ``attention_mask``, ``labels``).

Ranks shard the prepared files' row groups exactly as they shard a teacher cache
(``distil.train.stream``: whole row groups, balanced, equal batch counts, seekable resume), and
masking is the cache's own (``distil.teacher.logits.MaskingParams`` over
``distil.teacher.masking.mask_sequence``): the epoch is the masked copy number, so a sequence
gets a new mask every epoch (RoBERTa-style dynamic masking, as DistilBERT's scripts do), drawn
from ``(seed, seq_id, epoch)`` — one stream per sequence, so no two ranks ever share a mask and a
resumed run masks exactly as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from distil import storage
from distil.data import shards

COLUMNS = ["seq_id", "input_ids", "length"]


class PreparedBatches:
    """Masked batches of one rank from prepared shards; ``fs`` as in ``TeacherCache``."""

    def __init__(
        self,
        url: str,
        *,
        rank: int = 0,
        world_size: int = 1,
        split: str = "train",
        heldout_fraction: float = 0.05,
        mlm_probability: float = 0.15,
        fs: Any = None,
    ):
        from distil.teacher.logits import MaskingParams
        from distil.train.stream import RowGroups

        self.url = url
        self.manifest = shards.open_prepared(url)
        self.rank, self.world_size = rank, world_size
        self.split, self.heldout_fraction = split, heldout_fraction
        special = self.manifest["special_ids"]
        self.pad_id = int(special["pad"])
        self.masking = MaskingParams.from_config(
            {
                "seed": 0,  # replaced per epoch by iter_batches' seed
                "copies": 1,
                "mask_prob": mlm_probability,
                "mask_token_frac": 0.8,
                "random_token_frac": 0.1,
                "mlm_smoothing": 0.0,
            },
            self.manifest,
        )
        self.row_groups = RowGroups(storage.committed_files(url), fs)

    def _plan(self, seed: int, epoch: int, shuffle: bool = True):
        return self.row_groups.plan(
            rank=self.rank,
            world_size=self.world_size,
            seed=seed,
            epoch=epoch,
            split=self.split,
            heldout_fraction=self.heldout_fraction,
            shuffle=shuffle,
        )

    def num_batches(self, batch_size: int, *, seed: int = 0, epoch: int = 0) -> int:
        return -(-self._plan(seed, epoch).rows // batch_size)

    def iter_batches(
        self,
        batch_size: int,
        *,
        seed: int = 0,
        epoch: int = 0,
        start_batch: int = 0,
        shuffle: bool = True,
        shuffle_window: int = 1,
        read_ahead: int = 2,
    ) -> Iterator[dict[str, torch.Tensor]]:
        from distil.train.stream import batches

        tables = self.row_groups.iter_rows(
            self._plan(seed, epoch, shuffle),
            rank=self.rank,
            seed=seed,
            epoch=epoch,
            split=self.split,
            heldout_fraction=self.heldout_fraction,
            columns=COLUMNS,
            start_row=start_batch * batch_size,
            shuffle=shuffle,
            shuffle_window=shuffle_window,
            read_ahead=read_ahead,
        )
        yield from batches(tables, batch_size, lambda t: self.collate(t, seed, epoch))

    def collate(self, table: pa.Table, seed: int, epoch: int) -> dict[str, torch.Tensor]:
        """Mask each row with ``(seed, seq_id, copy=epoch)`` (the cache builder's vectorised
        ``MaskingParams.mask_batch``, one call per batch) and cut to the batch's longest."""
        seq_ids = table.column("seq_id").to_numpy()
        lengths = table.column("length").to_numpy().astype(np.int64)
        width = int(lengths.max()) if len(lengths) else 0
        ids = shards.input_ids_matrix(table)[:, :width]
        masked = dataclasses.replace(self.masking, seed=seed).mask_batch(
            ids, lengths, seq_ids, epoch
        )
        attention = np.arange(width)[None, :] < lengths[:, None]
        input_ids = np.where(attention, masked.input_ids, self.pad_id)
        labels = np.full(ids.shape, -100, dtype=np.int64)
        labels[masked.selected] = masked.labels
        return {
            "input_ids": torch.from_numpy(input_ids),
            "attention_mask": torch.from_numpy(attention.astype(np.int64)),
            "labels": torch.from_numpy(labels),
        }


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Host batch -> ``device``: pinned first on CUDA, so ``non_blocking`` really overlaps."""
    if device.type == "cuda":
        return {k: v.pin_memory().to(device, non_blocking=True) for k, v in batch.items()}
    return {k: v.to(device) for k, v in batch.items()}
