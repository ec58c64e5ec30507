"""What ``distil score`` writes, engine-free: Parquet schemas, part writers, the published
dataset, the teacher-agreement arithmetic and a reader that goes through the manifest (the
commit that ends a run, accounting and manifest, is ``distil.score.commit``).

Layout under ``OUTPUT/``::

    scored/dt=<date>/part-<run_id>-<uuid>.parquet       the scored rows, every committed run
    dead_letter/dt=<date>/part-<run_id>-<uuid>.parquet  the dead letters, every committed run
    run_id=<run_id>/manifest.json                       the commit point of one run; its ledger
    run_id=<run_id>/summary.json                        row accounting, agreement, timings
    run_id=<run_id>/attempt-<token>/{scored,dead_letter}/part-<uuid>.parquet   while running

``scored/`` and ``dead_letter/`` are Hive-partitioned Parquet datasets that pyarrow.dataset,
DuckDB and Spark read as tables. Every attempt writes its parts into a fresh ``attempt-<token>/``
(invisible to dataset readers). Commit = the manifest PUT listing that attempt's parts; then
:func:`publish` copies the parts into the dataset, deletes the dataset files of earlier attempts
of the same run id, rewrites the manifest to list the published copies and deletes its own
attempt folder (never another's: :func:`remove_stale_attempts` clears those of dead attempts,
called by the next run of the run id). A publish that dies is finished by the next run on the
same output (the manifest says whether it was published), so a crashed run never shows half
its output, and a rerun of a ``run_id`` never shows a row twice once it has committed. All of
it happens under the output's lease (``distil.score.lease``): one run at a time.
:func:`read_run` reads one run through its manifest.
"""

from __future__ import annotations

import datetime as dt
import io
import os
import posixpath
import re
import signal
import uuid
from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from distil import storage

KIND = "scored_reviews"
SUMMARY = "summary.json"
PARTITION = "dt"
DATASETS = {"files": "scored", "dead_letter_files": "dead_letter"}  # manifest key -> table dir
KEEP_ARROW_TYPES = {"string": pa.string(), "int64": pa.int64(), "float64": pa.float64(),
                    "bool": pa.bool_()}  # fmt: skip
_DATASET_PART = re.compile(r"part-(.+)-([0-9a-f]{32})\.parquet")

SCORED_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("label", pa.string()),
        ("label_id", pa.int32()),
        ("score", pa.float32()),
        ("probs", pa.list_(pa.float32())),
        ("model_fingerprint", pa.string()),
        ("run_id", pa.string()),
        ("scored_at", pa.timestamp("us", tz="UTC")),
        ("source_file", pa.string()),
        ("source_row", pa.int64()),
        ("id_generated", pa.bool_()),
        ("truncated", pa.bool_()),
        ("n_tokens", pa.int32()),
        ("text_sha256", pa.string()),
    ]
)

DEAD_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("source_file", pa.string()),
        ("source_row", pa.int64()),
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("raw", pa.string()),
        ("run_id", pa.string()),
        ("recorded_at", pa.timestamp("us", tz="UTC")),
    ]
)


KEEP_TYPES = ("string", "int64", "float64", "bool")


def parse_keep_columns(specs: list[str]) -> list[tuple[str, str]]:
    """``["product", "stars:int64"]`` -> ``[("product", "string"), ("stars", "int64")]``."""
    if not specs:
        return []
    reserved = {*SCORED_SCHEMA.names, PARTITION}
    out: list[tuple[str, str]] = []
    for spec in specs:
        name, _, typ = spec.partition(":")
        name, typ = name.strip(), (typ.strip() or "string")
        if not name or typ not in KEEP_TYPES:
            raise ValueError(f"keep column {spec!r}: expected name or name:{'|'.join(KEEP_TYPES)}")
        if name in reserved:
            raise ValueError(f"keep column {name!r}: the scored rows already have that column")
        if name in (n for n, _ in out):
            raise ValueError(f"keep column {name!r} given twice")
        out.append((name, typ))
    return out


def scored_schema(keep: list[tuple[str, str]]) -> pa.Schema:
    """``SCORED_SCHEMA`` plus the ``--keep-columns`` (name, type) pairs, in their order."""
    schema = SCORED_SCHEMA
    for name, typ in keep:
        schema = schema.append(pa.field(name, KEEP_ARROW_TYPES[typ]))
    return schema


def run_dir(output: str, run_id: str) -> str:
    return storage.join(output, f"run_id={run_id}")


def new_attempt() -> str:
    return f"attempt-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class PartWriter:
    """One Parquet part under ``dir_url/rel_dir``, built as rows arrive: every ``row_group``
    rows become a compressed row group in memory, so a writer holds one row group of rows
    (Python dicts from :meth:`add`, Arrow record batches from :meth:`add_batch`) plus the
    compressed bytes (tens of bytes a row), not a whole part's rows; the part is written with
    a single PUT by :meth:`close`, which returns its manifest entry."""

    def __init__(self, dir_url: str, rel_dir: str, schema: pa.Schema, row_group: int = 4096):
        self.dir_url, self.schema, self.row_group = dir_url, schema, row_group
        self.name = posixpath.join(rel_dir, f"part-{uuid.uuid4().hex}.parquet")
        self.rows = 0
        self.by_reason: Counter = Counter()
        self.truncated = 0
        self._rows: list[dict[str, Any]] = []  # added one by one, not yet a batch
        self._batches: list[pa.RecordBatch] = []
        self._pending = 0
        self._buf = io.BytesIO()
        self._writer = pq.ParquetWriter(self._buf, schema, compression="zstd")

    def add(self, row: dict[str, Any]) -> None:
        self._rows.append(row)
        self.rows += 1
        self._pending += 1
        if "reason" in self.schema.names:
            self.by_reason[row["reason"]] += 1
        if "truncated" in self.schema.names:
            self.truncated += bool(row["truncated"])
        if self._pending >= self.row_group:
            self._flush()

    def add_batch(self, batch: pa.RecordBatch) -> None:
        """Rows already in columns (the scoring graph's batches), in this writer's schema."""
        if batch.schema != self.schema:
            batch = pa.RecordBatch.from_arrays(batch.columns, schema=self.schema)
        self._rows_to_batch()
        self._batches.append(batch)
        self.rows += batch.num_rows
        self._pending += batch.num_rows
        if "reason" in self.schema.names:
            self.by_reason.update(batch.column("reason").to_pylist())
        if "truncated" in self.schema.names:
            self.truncated += int(pc.sum(batch.column("truncated")).as_py() or 0)
        if self._pending >= self.row_group:
            self._flush()

    def _rows_to_batch(self) -> None:
        if self._rows:  # kept in arrival order with the batches
            self._batches.append(pa.RecordBatch.from_pylist(self._rows, schema=self.schema))
            self._rows = []

    def _flush(self) -> None:
        self._rows_to_batch()
        if self._batches:
            self._writer.write_table(pa.Table.from_batches(self._batches, schema=self.schema))
            self._batches, self._pending = [], 0

    def close(self) -> dict[str, Any]:
        self._flush()
        self._writer.close()
        storage.write_bytes(storage.join(self.dir_url, self.name), self._buf.getvalue())
        info: dict[str, Any] = {"name": self.name, "rows": self.rows}
        if "reason" in self.schema.names:
            info["by_reason"] = dict(self.by_reason)
        if "truncated" in self.schema.names:
            info["truncated"] = self.truncated
        return info


def agreement_terms(student_probs: np.ndarray, teacher_logits: np.ndarray) -> tuple[int, float]:
    """(labels agree?, KL(teacher ‖ student)) for one row. The student side is the ``probs``
    column as written (float32), so the figure can be recomputed from the output alone."""
    t = teacher_logits.astype(np.float64)
    t = t - t.max()
    log_pt = t - np.log(np.exp(t).sum())
    log_ps = np.log(np.maximum(np.asarray(student_probs, np.float64), 1e-12))
    kl = float(np.sum(np.exp(log_pt) * (log_pt - log_ps)))
    return int(np.argmax(student_probs) == np.argmax(teacher_logits)), kl


def dataset_part(table: str, dt: str, run_id: str, part_name: str) -> str:
    """Where an attempt's part goes in the dataset (relative to OUTPUT). The run id is in the
    name, so a rerun finds (and replaces) its own earlier files and no other run's."""
    uid = posixpath.basename(part_name).removeprefix("part-").removesuffix(".parquet")
    return f"{table}/{PARTITION}={dt}/part-{run_id}-{uid}.parquet"


def run_of_dataset_file(path: str) -> str | None:
    m = _DATASET_PART.fullmatch(posixpath.basename(path))
    return m.group(1) if m else None


def publish(output: str, run_id: str) -> dict[str, Any]:
    """Make a committed run's parts the dataset's rows for that run id (idempotent: a publish
    that died part-way is finished by calling it again). Returns the published manifest."""
    run_url = run_dir(output, run_id)
    manifest = storage.read_manifest(run_url)
    if manifest.get("published", True):  # published, or written before datasets existed
        return manifest
    fs, out_path = storage.get_fs(output)
    keep: set[str] = set()
    published = dict(manifest, published=True)
    for key, table in DATASETS.items():
        entries = []
        for entry in manifest[key]:
            dest = dataset_part(table, manifest[PARTITION], run_id, entry["name"])
            storage.copy_file(storage.join(run_url, entry["name"]), storage.join(output, dest))
            _crash_point("publish")
            entries.append({**entry, "name": f"../{dest}"})
            keep.add(dest)
        published[key] = entries
    fs.invalidate_cache()
    for table in DATASETS.values():
        root = posixpath.join(out_path, table)
        for path in fs.find(root) if fs.exists(root) else []:
            rel = posixpath.relpath(path, out_path)
            if run_of_dataset_file(path) == run_id and rel not in keep:
                fs.rm(path)  # an earlier attempt of this run id
    storage.commit(run_url, published, cleanup=False)
    # only this commit's own attempt: the folder of an attempt still running is not ours to
    # delete (stale ones are swept by the next run of this run id, under the lease)
    storage.remove(storage.join(run_url, manifest["attempt"]))
    return published


def remove_stale_attempts(output: str, run_id: str, current: str) -> list[str]:
    """Delete the ``attempt-*`` folders of ``run_id`` other than ``current``: what runs of
    this run id that died before their commit left. Only a run holding the output's lease may
    call this (then no other attempt can be running), after publishing any committed run."""
    run_url = run_dir(output, run_id)
    fs, run_path = storage.get_fs(run_url)
    fs.invalidate_cache()
    if not fs.exists(run_path):
        return []
    stale = []
    for entry in fs.ls(run_path, detail=False):
        name = posixpath.basename(entry.rstrip("/"))
        if name.startswith("attempt-") and name != current:
            storage.remove(storage.join(run_url, name))
            stale.append(name)
    return stale


def _crash_point(where: str) -> None:
    """Tests make the process die here as ``kill -9`` would (no cleanup, no ``finally``), to
    show that the next run repairs what it leaves (tests/pipelines/test_score_lease.py)."""
    if os.environ.get("DISTIL_SCORE_CRASH_AT") == where:
        os.kill(os.getpid(), signal.SIGKILL)


def read_run(output: str, run_id: str, which: str = "files") -> pa.Table:
    """A committed run's scored rows (``which="files"``) or dead letters
    (``"dead_letter_files"``), read only through its manifest."""
    url = run_dir(output, run_id)
    schema = SCORED_SCHEMA if which == "files" else DEAD_SCHEMA  # + kept columns, if any
    tables = []
    for f in storage.committed_files(url, key=which):
        fs, path = storage.arrow_filesystem(f)
        tables.append(pq.read_table(path, filesystem=fs))
    return pa.concat_tables(tables) if tables else schema.empty_table()
