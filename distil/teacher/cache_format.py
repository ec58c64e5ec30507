"""The teacher-logit cache's format: its key, schema and the writer's tables (the reader,
``TeacherCache``, is ``distil.teacher.cache``).

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
    value against ~0.98 as raw bytes (``scripts/experiments/cache_bytes.py``)

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

from typing import Any

import numpy as np
import pyarrow as pa

from distil import storage
from distil.data import shards
from distil.teacher.masking import MaskedBatch
from distil.teacher.sparse import SparseLogits

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
