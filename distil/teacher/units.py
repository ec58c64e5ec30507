"""Units of work of the teacher-logits stage: bounded slices of the prepared shards.

A unit is ``unit_rows`` consecutive sequences of one prepared shard (the last one of a shard may
be shorter) and becomes one cache file ``<shard stem>-<unit index>.parquet`` with its own
marker. So parallelism is not capped by the number of prepared files, and what one task or
actor holds is bounded by ``unit_rows`` (times ``copies``), whatever the shard size.

The stage is three steps per unit, each a plain function here (the Ray job chains them as Ray
Data operators, a test or a GPU box without Ray calls them in a loop):

1. ``mask_unit`` (CPU): read the slice, mask every ``(sequence, copy)`` in one vectorised call;
2. ``distil.teacher.build.TeacherWorker`` (GPU): append the sparse teacher targets;
3. ``distil.teacher.build.commit_unit``: write the file (staged) and then its marker.

Between steps a unit travels as one row (``unit`` JSON + ``payload``, an Arrow IPC stream of its
table), so an engine can never split a unit across batches.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from distil import storage
from distil.data import shards
from distil.teacher import cache_format
from distil.teacher.masking import MaskingParams


def plan_units(
    prepared: dict[str, Any], input_url: str, output_url: str, unit_rows: int
) -> list[dict[str, Any]]:
    """Every unit of a prepared dataset in order: each prepared row in exactly one unit."""
    if unit_rows < 1:
        raise ValueError(f"unit_rows must be >= 1, not {unit_rows}")
    units = []
    for f in prepared["files"]:
        stem = f["name"].removesuffix(".parquet")
        n = int(f["rows"])
        for j, start in enumerate(range(0, n, unit_rows)):
            units.append(
                {
                    "name": f"{stem}-{j:05d}.parquet",
                    "input": storage.join(input_url, f["name"]),
                    "start": start,
                    "stop": min(start + unit_rows, n),
                    "output": output_url,
                }
            )
    return units


def unit_name(file_name: str) -> str:
    """The marker name of a unit (its file name without ``.parquet``)."""
    return file_name.removesuffix(".parquet")


def read_unit(unit: dict[str, Any]) -> pa.Table:
    """Rows ``[start, stop)`` of the unit's prepared shard, reading only the row groups that
    hold them."""
    start, stop = int(unit["start"]), int(unit["stop"])
    fs, path = storage.arrow_filesystem(unit["input"])
    with fs.open_input_file(path) as f:
        pf = pq.ParquetFile(f)
        md = pf.metadata
        bounds = np.cumsum([0] + [md.row_group(g).num_rows for g in range(md.num_row_groups)])
        groups = [g for g in range(md.num_row_groups) if bounds[g] < stop and bounds[g + 1] > start]
        if stop > bounds[-1]:
            raise RuntimeError(
                f"{storage.redact(unit['input'])} has {bounds[-1]} rows but its manifest says at "
                f"least {stop}: the prepared dataset changed after it was committed; prepare again"
            )
        table = pf.read_row_groups(groups, columns=["seq_id", "input_ids", "length"])
    return table.slice(start - int(bounds[groups[0]]), stop - start)


def mask_unit(unit: dict[str, Any], masking: MaskingParams) -> pa.Table:
    """The masked input half of the unit's cache table: one row per ``(sequence, copy)``,
    copy-major (all sequences of copy 0, then of copy 1, ...), so a distil epoch that reads one
    copy reads whole row groups of it (``commit_unit`` never lets a row group span two)."""
    table = read_unit(unit)
    seq_ids = table.column("seq_id").to_numpy()
    lengths = table.column("length").to_numpy().astype(np.int64)
    rows = np.tile(np.arange(table.num_rows), masking.copies)
    copies = np.repeat(np.arange(masking.copies), table.num_rows)
    ids = shards.input_ids_matrix(table)[rows]
    batch = masking.mask_batch(ids, lengths[rows], seq_ids[rows], copies)
    return cache_format.masked_table(
        seq_ids[rows], copies, lengths[rows], batch, masking.vocab_size
    )


def to_ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def from_ipc(data: bytes) -> pa.Table:
    return pa.ipc.open_stream(data).read_all()


def mask_stage(batch: dict[str, np.ndarray], masking: MaskingParams) -> dict[str, np.ndarray]:
    """Ray Data step 1 (CPU tasks): unit rows (``plan_units`` dicts) -> masked unit rows."""
    keys = ("name", "input", "start", "stop", "output")
    units = [
        {k: batch[k][i].item() if k in ("start", "stop") else str(batch[k][i]) for k in keys}
        for i in range(len(batch["name"]))
    ]
    return {
        "unit": np.array([json.dumps(u, sort_keys=True) for u in units]),
        "payload": np.array([to_ipc(mask_unit(u, masking)) for u in units], dtype=object),
    }
