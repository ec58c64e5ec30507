"""The teacher-logit cache: format, key, and the reader the distillation stage consumes.

Layout of ``<cache_root>/<key>/`` (``key`` = fingerprint of teacher weights hash, dataset
fingerprint, masking, sparsity and layout configs, so any change lands in a new directory and a
rerun with the same inputs finds its own finished output):

* ``shard-00000-00000.parquet …``: one per unit of work (``unit_rows`` consecutive sequences of
  one prepared shard: ``<shard stem>-<unit index>``), row groups of at most ``row_group_rows``
  rows, one row per ``(seq_id, copy)``, copy-major (all sequences of copy 0, then copy 1, …) and
  no row group spanning two copies, so an epoch reads only its copy (``TeacherCache.copy_for``):

  - ``seq_id`` int64, ``copy`` uint8
  - ``input_ids`` list<uint16>: the *masked* input, unpadded (``length`` ids)
  - ``positions`` list<uint16>: masked positions, ascending
  - ``labels`` list<uint16>: original ids at ``positions``
  - ``target_ids`` list<uint16>, ``target_logprobs`` list<float16>: ``len(positions) * K``
    values, position-major (K per position)
  - ``target_counts`` list<uint8> (sampled mode only): draw counts, 0 for unused slots
  - ``target_logz`` list<float32> (when the spec's ``kd_temperatures`` has one other than 1):
    ``len(positions) * n`` values, position-major, the teacher's log-partition
    ``c_T = log sum_v p_1(v)^(1/T)`` at each such T (``distil.teacher.sparse``)
  - ``hidden_sketch`` binary (``hidden_sketch_dims`` d > 0): ``length * d`` int8 bytes,
    position-major over every non-pad position 0..length-1: the int8 ``R @ h`` of the teacher's
    last hidden state (``distil.teacher.sketch``; ``R`` is ``hidden_sketch.npy`` next to the
    manifest). Binary, not list<int8>: Parquet stores int8 as INT32, ~1.43 compressed bytes a
    value against ~0.98 as raw bytes (``bench/cache_bytes.py``)

  Which positions the targets are for is the spec's ``kd_positions``: ``masked`` (default):
  ``positions``, as above; ``all``: every non-pad position 0..length-1 of the row in order, so
  the ``target_*`` lists hold ``length * K`` (``length * n``) values and no extra column is
  needed. ``positions``/``labels`` stay the masked positions (the MLM loss) either way.

  (ids are int32 instead of uint16 when the vocab exceeds 65,536.)
* ``_markers/shard-00000-00000.json``: per-unit completion (a killed run resumes from them).
* ``manifest.json`` (written last): ``kind="teacher_logits"``, ``key``, ``teacher``, ``data``,
  ``masking``, ``sparsity`` (with ``kd_positions`` and ``hidden_sketch_dims``), ``layout``,
  ``files``, row/position/target-position/token counts and bytes per position/token.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from distil import storage
from distil.data import shards
from distil.teacher.masking import MaskedBatch
from distil.teacher.sparse import SparseLogits, stored_temperatures

CACHE_KIND = "teacher_logits"
# 4: ``kd_positions`` (targets at the masked positions or at every non-pad one) and the optional
# ``hidden_sketch`` column (the cosine loss from the cache), both in the sparsity spec; unit files
# copy-major, no row group spanning two copies (dynamic masking: epoch e reads copy e % copies;
# a sequence-major cache with copies > 1 is refused by TeacherCache.copy_for).
# 3: ``target_logz`` (the teacher's log-partition at each KD temperature: top-k KD with its tail).
# 2: one file per unit of work (``unit_rows`` sequences of a prepared shard), bounded row groups,
# counter-based masking (masking version 2). 1: one file per prepared shard.
FORMAT_VERSION = 4


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


def cache_schema(
    vocab_size: int, sampled: bool, n_logz: int = 0, sketch: bool = False
) -> pa.Schema:
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
    if n_logz:
        # float32: c_2 reaches log(V)/2 ~ 5, where float16's step (~0.004) would shift the
        # teacher's kept mass at T by ~0.4% (tests/teacher/test_sparse.py measures it)
        fields.append(("target_logz", pa.list_(pa.float32())))
    if sketch:
        fields.append(("hidden_sketch", pa.binary()))
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


def with_targets(
    table: pa.Table, sparse: SparseLogits, vocab: int, kd_positions: str = "masked"
) -> pa.Table:
    """A full cache table: ``table`` (from ``masked_table``) plus the K targets of each of its
    target positions (``sparse`` rows in the table's row-major order of its masked positions,
    or of all its non-pad positions with ``kd_positions="all"``) and ``sparse.sketch``."""
    k = sparse.ids.shape[1]
    sampled = sparse.counts is not None
    n_logz = 0 if sparse.log_partition is None else sparse.log_partition.shape[1]
    schema = cache_schema(vocab, sampled, n_logz, sparse.sketch is not None)
    id_np = np.uint16 if vocab <= 65536 else np.int32
    token_offsets = table.column("input_ids").combine_chunks().offsets.to_numpy().astype(np.int64)
    by = token_offsets if kd_positions == "all" else None
    if by is None:
        by = table.column("positions").combine_chunks().offsets.to_numpy().astype(np.int64)
    offsets = by * k
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
    if n_logz:
        logz = sparse.log_partition.numpy().reshape(-1).astype(np.float32)
        cols.append(_list_column(offsets // k * n_logz, logz, pa.float32()))
    if sparse.sketch is not None:
        d = sparse.sketch.shape[1]
        flat = np.ascontiguousarray(sparse.sketch.numpy().reshape(-1).astype(np.int8))
        offsets = pa.py_buffer((token_offsets * d).astype(np.int32))
        rows = len(token_offsets) - 1
        cols.append(
            pa.BinaryArray.from_buffers(pa.binary(), rows, [None, offsets, pa.py_buffer(flat)])
        )
    return pa.Table.from_arrays(cols, schema=schema)


def binary_values(column: pa.ChunkedArray) -> np.ndarray:
    """The bytes of a binary column's rows, concatenated in row order, as int8."""
    arr = column.combine_chunks()
    offsets = np.frombuffer(arr.buffers()[1], np.int32)[arr.offset : arr.offset + len(arr) + 1]
    data = np.frombuffer(arr.buffers()[2], np.int8) if arr.buffers()[2] else np.zeros(0, np.int8)
    return data[offsets[0] : offsets[-1]]


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
    Each rank streams only its own whole row groups (``distil.train.stream``). ``fs``: an fsspec
    filesystem to read the files through (e.g. ``storage.CountingFileSystem`` to measure).
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
    def row_groups(self):
        """The cache's ``(file, row group)`` units (footers read on first use)."""
        from distil.train.stream import RowGroups

        if self._groups is None:
            self._groups = RowGroups(self.files, self.fs)
        return self._groups

    def plan(
        self,
        *,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        epoch: int = 0,
        split: str = "train",
        heldout_fraction: float = 0.05,
        shuffle: bool = True,
        all_copies: bool = False,
    ):
        """This rank's row groups for the epoch (``distil.train.stream.RankPlan``): those of
        the epoch's copy (``copy_for``), or of every copy with ``all_copies``."""
        return self.row_groups.plan(
            rank=rank,
            world_size=world_size,
            seed=seed,
            epoch=epoch,
            split=split,
            heldout_fraction=heldout_fraction,
            shuffle=shuffle,
            copy=None if all_copies else self.copy_for(epoch, split),
        )

    def num_batches(
        self,
        batch_size: int,
        *,
        world_size: int = 1,
        split: str = "train",
        heldout_fraction: float = 0.05,
        seed: int = 0,
        epoch: int = 0,
        all_copies: bool = False,
    ) -> int:
        """Batches each rank gets from ``iter_batches`` with the same arguments."""
        plan = self.plan(
            world_size=world_size,
            seed=seed,
            epoch=epoch,
            split=split,
            heldout_fraction=heldout_fraction,
            all_copies=all_copies,
        )
        return -(-plan.rows // batch_size)

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
        start_batch: int = 0,
        shuffle_window: int = 1,
        read_ahead: int = 2,
        all_copies: bool = False,
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Batches for one rank of ``world_size``, from batch ``start_batch`` of the epoch on.

        Ranks read disjoint whole row groups and yield the same number of rows (the smallest
        rank's; at most ``world_size - 1`` row groups dropped per epoch), see
        ``distil.train.stream``. ``start_batch`` seeks: earlier row groups are not read. Only
        the epoch's masked copy is read (``copy_for``: each sequence once per epoch), unless
        ``all_copies``.
        """
        from distil.train.stream import batches

        plan = self.plan(
            rank=rank,
            world_size=world_size,
            seed=seed,
            epoch=epoch,
            split=split,
            heldout_fraction=heldout_fraction,
            shuffle=shuffle,
            all_copies=all_copies,
        )
        tables = self.row_groups.iter_rows(
            plan,
            rank=rank,
            seed=seed,
            epoch=epoch,
            split=split,
            heldout_fraction=heldout_fraction,
            start_row=start_batch * batch_size,
            shuffle=shuffle,
            shuffle_window=shuffle_window,
            read_ahead=read_ahead,
        )
        yield from batches(tables, batch_size, self.collate)

    def collate(self, table: pa.Table) -> dict[str, torch.Tensor]:
        """One batch (the contract's tensors) from a table of cache rows, vectorised."""
        from distil.train.stream import list_parts, scatter_rows

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
