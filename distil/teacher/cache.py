"""The teacher-logit cache's reader, ``TeacherCache`` (the only thing the distillation stage
touches), and the ``latest.json`` pointer to a cache root's newest cache. The format, the key and
the writer's tables: ``distil.teacher.cache_format``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from distil import storage
from distil.data.readers.stream import (
    RankPlan,
    ReadPosition,
    RowGroups,
    batches,
    list_parts,
    scatter_rows,
)
from distil.teacher.cache_format import CACHE_KIND, binary_values
from distil.teacher.sparse import stored_temperatures


class TeacherCache:
    """Reader of a committed teacher cache (the only thing the distillation stage touches).

    ``iter_batches`` yields dicts of torch tensors (see ``docs/CONTRACTS.md``): the masked
    ``input_ids`` and ``attention_mask`` [B, L] (L = longest row of the batch), ``labels`` [B, L]
    (-100 off the masked positions), and ``target_ids`` / ``target_logprobs`` (and
    ``target_counts`` in sampled mode) [N, K] for the N masked positions in row-major order,
    and ``target_logz`` [N, len(kd_temperatures)]: the teacher's log-partition ``c_T`` at each
    temperature the cache serves (0 for T = 1, which is not stored). A ``kd_positions: all``
    cache has its N target rows at every non-pad position and adds ``kd_positions`` [B, L]
    bool (where they are); a cache with a sketch adds ``hidden_sketch`` [n_tokens, d] float
    (int8 values, one row per non-pad token, row-major) and ``TeacherCache.sketch_matrix``.
    Each rank streams only its own whole row groups (``distil.data.readers.stream``). ``fs``: an
    fsspec filesystem to read the files through (e.g. ``storage.CountingFileSystem`` to measure).
    """

    def __init__(self, url: str, fs: Any = None):
        self.url = url
        self.manifest: dict[str, Any] = storage.read_manifest(url)
        if self.manifest.get("kind") != CACHE_KIND:
            raise ValueError(
                f"{url} is not a teacher cache (manifest kind={self.manifest.get('kind')!r})"
            )
        self.sparsity: dict[str, Any] = self.manifest["sparsity"]
        self.k: int = int(self.sparsity["k"])
        self.sampled: bool = self.sparsity["mode"] == "sampled"
        # temperatures KD can run at (a format-2 cache has no log-partitions: T = 1 only)
        self.kd_temperatures: list[float] = [
            float(t) for t in self.sparsity.get("kd_temperatures", [1.0])
        ]
        self.stored_temperatures: list[float] = stored_temperatures(self.sparsity)
        self.pad_id: int = int(self.manifest["special_ids"]["pad"])
        self.kd_positions: str = self.sparsity.get("kd_positions", "masked")
        self.sketch_dims: int = int(self.sparsity.get("hidden_sketch_dims", 0))
        self._sketch_matrix: np.ndarray | None = None
        # masked copies per sequence: epoch e reads copy e % copies (dynamic masking)
        self.copies: int = int(self.manifest.get("masking", {}).get("copies", 1))
        self.files: list[str] = storage.committed_files(url)
        self.fs = fs
        self._groups = None

    def copy_for(self, epoch: int, split: str) -> int | None:
        """The masked copy an epoch reads: ``epoch % copies`` (RoBERTa-style dynamic masking
        from a static cache: C copies give C epochs C different maskings), copy 0 for the
        heldout split (a stable eval); None: a one-copy cache, every row."""
        if self.copies == 1:
            return None
        copy = 0 if split == "heldout" else epoch % self.copies
        mixed = [u for u, c in enumerate(self.row_groups.copy_of) if c is None or c < 0]
        if mixed:
            fi, rg = self.row_groups.units[mixed[0]]
            raise ValueError(
                f"{self.files[fi]} row group {rg} holds rows of several masked copies (a cache "
                "written sequence-major, before dynamic masking): run `distil logits` again to "
                "rebuild it copy-major"
            )
        return copy

    def __len__(self) -> int:
        return int(self.manifest["rows"])

    @property
    def sketch_matrix(self) -> np.ndarray | None:
        """``R`` [d, H] float32 the ``hidden_sketch`` column was made with (None: no sketch)."""
        if self.sketch_dims and self._sketch_matrix is None:
            from distil.teacher.sketch import SKETCH_FILE, from_npy

            self._sketch_matrix = from_npy(storage.read_bytes(storage.join(self.url, SKETCH_FILE)))
        return self._sketch_matrix

    @property
    def row_groups(self) -> RowGroups:
        """The cache's ``(file, row group)`` units (footers read on first use)."""
        if self._groups is None:
            self._groups = RowGroups(self.files, self.fs)
        return self._groups

    def plan(
        self,
        position: ReadPosition = ReadPosition(),
        *,
        shuffle: bool = True,
        all_copies: bool = False,
    ) -> RankPlan:
        """This rank's row groups for the epoch: those of the epoch's copy (``copy_for``), or
        of every copy with ``all_copies``."""
        copy = None if all_copies else self.copy_for(position.epoch, position.split)
        return self.row_groups.plan(position, shuffle=shuffle, copy=copy)

    def num_batches(
        self, batch_size: int, position: ReadPosition = ReadPosition(), *, all_copies: bool = False
    ) -> int:
        """Batches each rank gets from ``iter_batches`` with the same position (every rank
        gets as many)."""
        return -(-self.plan(position, all_copies=all_copies).rows // batch_size)

    def iter_batches(
        self,
        batch_size: int,
        position: ReadPosition = ReadPosition(),
        *,
        shuffle: bool = True,
        start_batch: int = 0,
        shuffle_window: int = 1,
        read_ahead: int = 2,
        all_copies: bool = False,
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Batches for one rank (``position``), from batch ``start_batch`` of the epoch on.

        Ranks read disjoint whole row groups and yield the same number of rows (the smallest
        rank's; at most ``world_size - 1`` row groups dropped per epoch), see
        ``distil.data.readers.stream``. ``start_batch`` seeks: earlier row groups are not read.
        Only the epoch's masked copy is read (``copy_for``: each sequence once per epoch),
        unless ``all_copies``.
        """
        plan = self.plan(position, shuffle=shuffle, all_copies=all_copies)
        tables = self.row_groups.iter_rows(
            plan,
            position,
            start_row=start_batch * batch_size,
            shuffle=shuffle,
            shuffle_window=shuffle_window,
            read_ahead=read_ahead,
        )
        yield from batches(tables, batch_size, self.collate)

    def collate(self, table: pa.Table) -> dict[str, torch.Tensor]:
        """One batch (the contract's tensors) from a table of cache rows, vectorised."""

        k = self.k
        lengths, ids = list_parts(table, "input_ids")
        input_ids = scatter_rows(lengths, ids, self.pad_id)
        attention = scatter_rows(lengths, np.ones(len(ids), np.int64), 0)
        n_pos, pos = list_parts(table, "positions")
        _, lab = list_parts(table, "labels")
        labels = np.full(input_ids.shape, -100, dtype=np.int64)
        labels[np.repeat(np.arange(len(n_pos)), n_pos), pos.astype(np.int64)] = lab
        batch = {
            "input_ids": torch.from_numpy(input_ids),
            "attention_mask": torch.from_numpy(attention),
            "labels": torch.from_numpy(labels),
            "target_ids": torch.from_numpy(
                list_parts(table, "target_ids")[1].astype(np.int64).reshape(-1, k)
            ),
            "target_logprobs": torch.from_numpy(
                list_parts(table, "target_logprobs")[1].astype(np.float32).reshape(-1, k)
            ),
        }
        if self.sampled:
            batch["target_counts"] = torch.from_numpy(
                list_parts(table, "target_counts")[1].astype(np.float32).reshape(-1, k)
            )
        n_targets = len(ids) if self.kd_positions == "all" else len(lab)
        logz = np.zeros((n_targets, len(self.kd_temperatures)), np.float32)
        if self.stored_temperatures:
            stored = list_parts(table, "target_logz")[1].astype(np.float32)
            stored = stored.reshape(-1, len(self.stored_temperatures))
            for j, t in enumerate(self.stored_temperatures):
                logz[:, self.kd_temperatures.index(t)] = stored[:, j]
        batch["target_logz"] = torch.from_numpy(logz)
        if self.kd_positions == "all":
            batch["kd_positions"] = torch.from_numpy(attention.astype(bool))
        if self.sketch_dims:
            sk = binary_values(table.column("hidden_sketch")).astype(np.float32)
            batch["hidden_sketch"] = torch.from_numpy(sk.reshape(-1, self.sketch_dims))
        return batch


LATEST_POINTER = "latest.json"


def write_latest_pointer(cache_root: str, cache_url: str, key: str) -> None:
    """``CACHE_ROOT/latest.json`` names the newest committed cache, so a scheduled distil job
    can be configured with the root's pointer instead of a key it cannot know in advance. A
    pointer that already says so is left alone: a cache hit writes nothing."""
    url = storage.join(cache_root, LATEST_POINTER)
    pointer = {"kind": "latest_teacher_cache", "url": cache_url, "key": key}
    if storage.exists(url) and storage.read_json(url) == pointer:
        return
    storage.write_json(url, pointer)


def resolve_cache_url(url: str) -> str:
    """A cache dir URL, following a ``latest.json`` pointer if given one — or if given the cache
    root (``--cache-root`` of ``distil logits``), whose pointer names its newest cache."""
    if not url.endswith(".json"):
        root_pointer = storage.join(url, LATEST_POINTER)
        if storage.is_committed(url) or not storage.exists(root_pointer):
            return url
        url = root_pointer
    pointer = storage.read_json(url)
    if pointer.get("kind") != "latest_teacher_cache":
        raise ValueError(f"{url} is not a teacher-cache pointer (kind={pointer.get('kind')})")
    return pointer["url"]
