"""The teacher-logit cache: format, key, and the reader the distillation stage consumes.

Layout of ``<cache_root>/<key>/`` (``key`` = fingerprint of teacher weights hash, dataset
fingerprint, masking, sparsity and layout configs, so any change lands in a new directory and a
rerun with the same inputs finds its own finished output):

* ``shard-00000-00000.parquet …``: one per unit of work (``unit_rows`` consecutive sequences of
  one prepared shard: ``<shard stem>-<unit index>``), row groups of at most ``row_group_rows``
  rows, one row per ``(seq_id, copy)``, copies of a sequence together:

  - ``seq_id`` int64, ``copy`` uint8
  - ``input_ids`` list<uint16>: the *masked* input, unpadded (``length`` ids)
  - ``positions`` list<uint16>: masked positions, ascending
  - ``labels`` list<uint16>: original ids at ``positions``
  - ``target_ids`` list<uint16>, ``target_logprobs`` list<float16>: ``len(positions) * K``
    values, position-major (K per position)
  - ``target_counts`` list<uint8> (sampled mode only): draw counts, 0 for unused slots

  (ids are int32 instead of uint16 when the vocab exceeds 65,536.)
* ``_markers/shard-00000-00000.json``: per-unit completion (a killed run resumes from them).
* ``manifest.json`` (written last): ``kind="teacher_logits"``, ``key``, ``teacher``, ``data``,
  ``masking``, ``sparsity``, ``layout``, ``files``, row/position/token counts and bytes per
  position/token.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from distil import storage
from distil.data import shards
from distil.data.shards import is_heldout
from distil.teacher.masking import MaskedBatch
from distil.teacher.sparse import SparseLogits

CACHE_KIND = "teacher_logits"
# 2: one file per unit of work (``unit_rows`` sequences of a prepared shard), bounded row groups,
# counter-based masking (masking version 2). 1: one file per prepared shard.
FORMAT_VERSION = 2


def cache_key(
    teacher_sha256: str,
    data_fingerprint: str,
    masking: dict[str, Any],
    sparsity: dict[str, Any],
    layout: dict[str, Any],
) -> str:
    """Directory name of a cache: changes whenever teacher, data, masking, sparsity or file
    layout (``LogitsConfig.layout()``: which files, which row groups) change."""
    return storage.fingerprint(
        {
            "format": FORMAT_VERSION,
            "teacher": teacher_sha256,
            "data": data_fingerprint,
            "masking": masking,
            "sparsity": sparsity,
            "layout": layout,
        }
    )


def cache_schema(vocab_size: int, sampled: bool) -> pa.Schema:
    ids = shards.id_type(vocab_size)
    fields = [
        ("seq_id", pa.int64()),
        ("copy", pa.uint8()),
        ("input_ids", pa.list_(ids)),
        ("positions", pa.list_(pa.uint16())),
        ("labels", pa.list_(ids)),
        ("target_ids", pa.list_(ids)),
        ("target_logprobs", pa.list_(pa.float16())),
    ]
    if sampled:
        fields.append(("target_counts", pa.list_(pa.uint8())))
    return pa.schema(fields)


def _list_column(offsets: np.ndarray, flat: np.ndarray, typ: pa.DataType) -> pa.ListArray:
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(flat, typ))


def masked_table(
    seq_ids: np.ndarray, copies: np.ndarray, lengths: np.ndarray, batch: MaskedBatch, vocab: int
) -> pa.Table:
    """The input half of a cache table (``seq_id`` … ``labels``) from a masked batch whose row r
    is ``(seq_ids[r], copies[r])``, ``lengths[r]`` ids long; targets come later (``with_targets``)."""
    schema = cache_schema(vocab, sampled=False)
    id_np = np.uint16 if vocab <= 65536 else np.int32
    lengths = np.asarray(lengths, dtype=np.int64)
    id_offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=id_offsets[1:])
    inside = np.arange(batch.input_ids.shape[1])[None, :] < lengths[:, None]
    pos_offsets, positions = batch.positions()
    ids_type = schema.field("input_ids").type.value_type
    cols = [
        pa.array(np.asarray(seq_ids, np.int64)),
        pa.array(np.asarray(copies, np.uint8)),
        _list_column(id_offsets, batch.input_ids[inside].astype(id_np), ids_type),
        _list_column(pos_offsets, positions.astype(np.uint16), pa.uint16()),
        _list_column(pos_offsets, batch.labels.astype(id_np), ids_type),
    ]
    return pa.Table.from_arrays(cols, schema=pa.schema(list(schema)[:5]))


def with_targets(table: pa.Table, sparse: SparseLogits, vocab: int) -> pa.Table:
    """A full cache table: ``table`` (from ``masked_table``) plus the K targets of each of its
    masked positions (``sparse`` rows in the table's row-major position order)."""
    k = sparse.ids.shape[1]
    sampled = sparse.counts is not None
    schema = cache_schema(vocab, sampled)
    id_np = np.uint16 if vocab <= 65536 else np.int32
    offsets = table.column("positions").combine_chunks().offsets.to_numpy().astype(np.int64) * k
    cols = [table.column(i) for i in range(5)]
    cols.append(
        _list_column(
            offsets,
            sparse.ids.numpy().reshape(-1).astype(id_np),
            schema.field("target_ids").type.value_type,
        )
    )
    cols.append(
        _list_column(offsets, sparse.logprobs.numpy().reshape(-1).astype(np.float16), pa.float16())
    )
    if sampled:
        counts = sparse.counts.numpy().reshape(-1).astype(np.uint8)
        cols.append(_list_column(offsets, counts, pa.uint8()))
    return pa.Table.from_arrays(cols, schema=schema)


def _parts(table: pa.Table, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, flat values) of a list column, zero-copy where pyarrow allows."""
    col = table.column(name).combine_chunks()
    return col.offsets.to_numpy(), col.values.to_numpy(zero_copy_only=False)


class TeacherCache:
    """Reader of a committed teacher cache (the only thing the distillation stage touches).

    ``iter_batches`` yields dicts of torch tensors (see ``docs/CONTRACTS.md``): the masked
    ``input_ids`` and ``attention_mask`` [B, L] (L = longest row of the batch), ``labels`` [B, L]
    (-100 off the masked positions), and ``target_ids`` / ``target_logprobs`` (and
    ``target_counts`` in sampled mode) [N, K] for the N masked positions in row-major order.
    """

    def __init__(self, url: str):
        self.url = url
        self.manifest: dict[str, Any] = storage.read_manifest(url)
        if self.manifest.get("kind") != CACHE_KIND:
            raise ValueError(
                f"{url} is not a teacher cache (manifest kind={self.manifest.get('kind')!r})"
            )
        self.sparsity: dict[str, Any] = self.manifest["sparsity"]
        self.k: int = int(self.sparsity["k"])
        self.sampled: bool = self.sparsity["mode"] == "sampled"
        self.pad_id: int = int(self.manifest["special_ids"]["pad"])
        self.files: list[str] = storage.committed_files(url)
        self._seq_ids: list[np.ndarray] | None = None

    def __len__(self) -> int:
        return int(self.manifest["rows"])

    def _all_seq_ids(self) -> list[np.ndarray]:
        if self._seq_ids is None:
            self._seq_ids = [
                shards.read_table(f, columns=["seq_id"]).column("seq_id").to_numpy()
                for f in self.files
            ]
        return self._seq_ids

    def _order(
        self, split: str, heldout_fraction: float, seed: int, epoch: int, shuffle: bool
    ) -> list[tuple[int, np.ndarray]]:
        """(file index, row indices) in reading order: shards shuffled, rows shuffled within."""
        if split not in ("train", "heldout", "all"):
            raise ValueError(f"split must be train, heldout or all, not {split!r}")
        rng = np.random.default_rng([seed, epoch])
        file_order = rng.permutation(len(self.files)) if shuffle else np.arange(len(self.files))
        out = []
        for fi in file_order:
            seq_ids = self._all_seq_ids()[fi]
            rows = np.arange(len(seq_ids))
            if split != "all":
                held = is_heldout(seq_ids, heldout_fraction)
                rows = rows[held] if split == "heldout" else rows[~held]
            if shuffle:
                rows = rng.permutation(rows)
            out.append((int(fi), rows))
        return out

    def num_batches(
        self,
        batch_size: int,
        *,
        world_size: int = 1,
        split: str = "train",
        heldout_fraction: float = 0.05,
    ) -> int:
        """Batches each rank gets from ``iter_batches`` with the same arguments."""
        total = sum(len(r) for _, r in self._order(split, heldout_fraction, 0, 0, False))
        per_rank = total // world_size
        return -(-per_rank // batch_size)

    def iter_batches(
        self,
        batch_size: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        epoch: int = 0,
        split: str = "train",
        heldout_fraction: float = 0.05,
        shuffle: bool = True,
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Batches for one rank of ``world_size``.

        Rows are dealt round-robin over ranks after a (seed, epoch) shuffle and the total is cut
        to a multiple of ``world_size`` (at most ``world_size - 1`` rows dropped), so ranks see
        disjoint rows and the same number of batches (DDP would hang otherwise).
        """
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world_size {world_size}")
        order = self._order(split, heldout_fraction, seed, epoch, shuffle)
        total = sum(len(r) for _, r in order)
        per_rank = total // world_size
        # Global position g goes to rank g % world_size; keep this rank's first per_rank rows.
        files = np.concatenate([np.full(len(r), fi) for fi, r in order] or [np.zeros(0, int)])
        rows = np.concatenate([r for _, r in order] or [np.zeros(0, int)])
        mine = np.arange(rank, per_rank * world_size, world_size)
        plan = list(zip(files[mine].tolist(), rows[mine].tolist(), strict=True))
        loaded: tuple[int, dict[str, tuple[np.ndarray, np.ndarray]]] | None = None
        for start in range(0, len(plan), batch_size):
            chunk = plan[start : start + batch_size]
            rows_by_file: list[tuple[dict, int]] = []
            for fi, r in chunk:
                if loaded is None or loaded[0] != fi:
                    loaded = (fi, self._load(fi))
                rows_by_file.append((loaded[1], r))
            yield self._collate(rows_by_file)

    def _load(self, fi: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        table = shards.read_table(self.files[fi])
        names = ["input_ids", "positions", "labels", "target_ids", "target_logprobs"]
        if self.sampled:
            names.append("target_counts")
        return {n: _parts(table, n) for n in names}

    def _collate(self, rows: list[tuple[dict, int]]) -> dict[str, torch.Tensor]:
        k = self.k
        lengths = [int(p["input_ids"][0][r + 1] - p["input_ids"][0][r]) for p, r in rows]
        b, seq_len = len(rows), max(lengths) if lengths else 0
        input_ids = np.full((b, seq_len), self.pad_id, dtype=np.int64)
        attention = np.zeros((b, seq_len), dtype=np.int64)
        labels = np.full((b, seq_len), -100, dtype=np.int64)
        tids, tlps, tcnt = [], [], []
        for j, (p, r) in enumerate(rows):
            o, flat = p["input_ids"]
            input_ids[j, : lengths[j]] = flat[o[r] : o[r + 1]]
            attention[j, : lengths[j]] = 1
            po, pos = p["positions"]
            lo, lab = p["labels"]
            labels[j, pos[po[r] : po[r + 1]].astype(np.int64)] = lab[lo[r] : lo[r + 1]]
            to, ti = p["target_ids"]
            tids.append(ti[to[r] : to[r + 1]])
            vo, tv = p["target_logprobs"]
            tlps.append(tv[vo[r] : vo[r + 1]])
            if self.sampled:
                co, cv = p["target_counts"]
                tcnt.append(cv[co[r] : co[r + 1]])
        batch = {
            "input_ids": torch.from_numpy(input_ids),
            "attention_mask": torch.from_numpy(attention),
            "labels": torch.from_numpy(labels),
            "target_ids": torch.from_numpy(np.concatenate(tids).astype(np.int64).reshape(-1, k)),
            "target_logprobs": torch.from_numpy(
                np.concatenate(tlps).astype(np.float32).reshape(-1, k)
            ),
        }
        if self.sampled:
            batch["target_counts"] = torch.from_numpy(
                np.concatenate(tcnt).astype(np.float32).reshape(-1, k)
            )
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
