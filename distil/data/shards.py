"""The packed-sequence shard format: what stage 1 writes and every later stage reads.

A prepared dataset is a directory URL holding ``shard-00000.parquet …`` (one per input shard)
and ``manifest.json`` (see docs/stages/prepare.md, "manifest.json"). Each row is one BERT sequence:

* ``seq_id``   int64 — stable id: ``(input_shard_index << 32) | row_index_in_shard``
* ``input_ids`` list<uint16> (int32 when the vocab exceeds 65,535), exactly ``seq_len`` long:
  ``[CLS] … [SEP]`` then ``[PAD]`` to ``seq_len``
* ``length``   int32 — tokens before padding
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from distil import storage

SHARD_PATTERN = "shard-{index:05d}.parquet"
ROW_GROUP_ROWS = 4096  # ~1 MB per row group at seq_len 128: streams without loading a shard


def id_type(vocab_size: int) -> pa.DataType:
    return pa.uint16() if vocab_size <= 65536 else pa.int32()


def schema(vocab_size: int) -> pa.Schema:
    return pa.schema(
        [
            ("seq_id", pa.int64()),
            ("input_ids", pa.list_(id_type(vocab_size))),
            ("length", pa.int32()),
        ]
    )


def make_seq_id(shard_index: int, row: int) -> int:
    return (shard_index << 32) | row


def to_table(seq_ids: np.ndarray, input_ids: np.ndarray, lengths: np.ndarray, vocab_size: int):
    """Build a shard table from ``[n]`` ids, a ``[n, seq_len]`` id matrix and ``[n]`` lengths."""
    n, seq_len = input_ids.shape
    np_type = np.uint16 if vocab_size <= 65536 else np.int32
    flat = pa.array(input_ids.astype(np_type, copy=False).reshape(-1))
    offsets = pa.array(np.arange(0, (n + 1) * seq_len, seq_len, dtype=np.int32))
    ids = pa.ListArray.from_arrays(offsets, flat)
    return pa.Table.from_arrays(
        [pa.array(seq_ids, pa.int64()), ids, pa.array(lengths, pa.int32())],
        schema=schema(vocab_size),
    )


def write_table(
    table: pa.Table, f: IO, row_group_rows: int = ROW_GROUP_ROWS, breaks: list[int] = ()
) -> None:
    """Deterministic bytes for the same table: fixed writer options, no timestamps. No row
    group spans a row offset in ``breaks`` (a teacher cache's copy boundaries)."""
    cuts = [0, *sorted(b for b in set(breaks) if 0 < b < table.num_rows), table.num_rows]
    with pq.ParquetWriter(
        f,
        table.schema,
        compression="zstd",
        use_dictionary=False,
        write_statistics=True,
        store_schema=True,
    ) as writer:
        for a, b in zip(cuts[:-1], cuts[1:], strict=True):
            writer.write_table(table.slice(a, b - a), row_group_size=row_group_rows)


def read_table(url: str, columns: list[str] | None = None) -> pa.Table:
    fs, path = storage.arrow_filesystem(url)
    return pq.read_table(path, filesystem=fs, columns=columns)


def iter_batches(url: str, batch_rows: int = ROW_GROUP_ROWS) -> Iterator[pa.RecordBatch]:
    fs, path = storage.arrow_filesystem(url)
    with fs.open_input_file(path) as f:
        yield from pq.ParquetFile(f).iter_batches(batch_size=batch_rows)


def input_ids_matrix(table: pa.Table | pa.RecordBatch) -> np.ndarray:
    """``[n, seq_len]`` int64 array of a shard table's ``input_ids`` (zero-copy flatten)."""
    col = table.column("input_ids")
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    n = len(col)
    flat = col.flatten().to_numpy(zero_copy_only=False)
    return flat.reshape(n, -1).astype(np.int64) if n else np.zeros((0, 0), np.int64)


def is_heldout(seq_ids: np.ndarray | int, fraction: float) -> np.ndarray | bool:
    """Deterministic held-out split by ``seq_id`` (a multiplicative hash, not position in file),
    shared by teacher adaptation, distillation eval and any report."""
    x = (np.asarray(seq_ids, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(40)
    return (x % np.uint64(1_000_000)) < np.uint64(int(fraction * 1_000_000))


def open_prepared(url: str) -> dict[str, Any]:
    """The committed manifest of a prepared dataset (raises if the run never committed)."""
    manifest = storage.read_manifest(url)
    if manifest.get("kind") != "prepared":
        raise ValueError(f"{url} is not a prepared dataset (manifest kind={manifest.get('kind')})")
    return manifest
