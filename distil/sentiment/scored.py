"""What ``distil score`` writes, engine-free: Parquet schemas, part writers, the run commit, the
teacher-agreement arithmetic and a reader that goes through the manifest.

Layout of one run (``OUTPUT/run_id=<run_id>/``)::

    attempt-<token>/scored/part-<uuid>.parquet       scored rows (SCORED_SCHEMA)
    attempt-<token>/dead_letter/part-<uuid>.parquet  rows that could not be scored (DEAD_SCHEMA)
    summary.json                                      row accounting, agreement, timings
    manifest.json                                     written LAST; lists one attempt's parts

Every attempt writes into a fresh ``attempt-<token>/``; the manifest PUT is the atomic switch
from the previous attempt's output to this one's, then older attempts are deleted. Readers use
:func:`read_run`, which reads only the files the manifest lists, so a rerun of a ``run_id``
never shows a row twice, and a crashed run never shows half its output.
"""

from __future__ import annotations

import datetime as dt
import io
import posixpath
import uuid
from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from distil import storage

KIND = "scored_reviews"
SUMMARY = "summary.json"

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


def run_dir(output: str, run_id: str) -> str:
    return storage.join(output, f"run_id={run_id}")


def new_attempt() -> str:
    return f"attempt-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def write_part(dir_url: str, rel_dir: str, rows: list[dict[str, Any]], schema: pa.Schema) -> dict:
    """One Parquet part (a single PUT) under ``dir_url/rel_dir``; returns its manifest entry."""
    table = pa.Table.from_pylist(rows, schema=schema)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    name = posixpath.join(rel_dir, f"part-{uuid.uuid4().hex}.parquet")
    storage.write_bytes(storage.join(dir_url, name), buf.getvalue())
    info: dict[str, Any] = {"name": name, "rows": len(rows)}
    if "reason" in schema.names:
        info["by_reason"] = dict(Counter(r["reason"] for r in rows))
    if "truncated" in schema.names:
        info["truncated"] = sum(bool(r["truncated"]) for r in rows)
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


def finalize_run(
    run_url: str,
    run_id: str,
    attempt: str,
    scored_parts: list[dict],
    dead_parts: list[dict],
    file_counts: list[dict],
    agreement: tuple[int, int, float] | None,
    meta: dict[str, Any],
) -> dict[str, Any]:
    """Check the accounting, write summary.json, commit the manifest, delete older attempts."""
    rows_in = sum(c["records"] for c in file_counts)
    scored = sum(p["rows"] for p in scored_parts)
    dead = sum(p["rows"] for p in dead_parts)
    by_reason: Counter = Counter()
    for p in dead_parts:
        by_reason.update(p["by_reason"])
    by_worker: Counter = Counter()  # host:pid of the SDK worker process that scored the rows
    for p in scored_parts:
        by_worker.update(p.get("workers", {}))
    summary = {
        "run_id": run_id,
        "attempt": attempt,
        "rows_in": rows_in,
        "scored": scored,
        "dead_letter": dead,
        "dead_letter_by_reason": dict(sorted(by_reason.items())),
        "truncated": sum(p["truncated"] for p in scored_parts),
        "scored_by_worker": dict(sorted(by_worker.items())),
        "accounted": rows_in == scored + dead,
        "files_in": sorted(file_counts, key=lambda c: c["file"]),
        "finished_at": now_utc().isoformat(),
        **meta,
    }
    if agreement is not None:
        covered, agree, kl_sum = agreement
        summary["teacher_agreement"] = {
            "covered_rows": covered,
            "label_agreement": agree / covered if covered else None,
            "mean_kl": kl_sum / covered if covered else None,
        }
    if not summary["accounted"]:
        storage.write_json(storage.join(run_url, attempt, SUMMARY), summary)
        raise RuntimeError(
            f"row accounting failed: {rows_in} in != {scored} scored + {dead} dead-letter; "
            "not committing this run"
        )
    storage.write_json(storage.join(run_url, SUMMARY), summary)
    manifest = {
        "kind": KIND,
        "run_id": run_id,
        "attempt": attempt,
        "files": sorted(scored_parts, key=lambda p: p["name"]),
        "dead_letter_files": sorted(dead_parts, key=lambda p: p["name"]),
        "summary": summary,
        "fingerprint": storage.fingerprint([run_id, attempt]),
    }
    storage.commit(run_url, manifest, cleanup=False)
    fs, path = storage.get_fs(run_url)
    fs.invalidate_cache(path)
    for entry in fs.ls(path, detail=False):
        name = posixpath.basename(entry.rstrip("/"))
        if name.startswith("attempt-") and name != attempt:
            storage.remove(storage.join(run_url, name))
    return summary


def read_run(output: str, run_id: str, which: str = "files") -> pa.Table:
    """A committed run's scored rows (``which="files"``) or dead letters
    (``"dead_letter_files"``), read only through its manifest."""
    url = run_dir(output, run_id)
    schema = SCORED_SCHEMA if which == "files" else DEAD_SCHEMA
    tables = []
    for f in storage.committed_files(url, key=which):
        fs, path = storage.arrow_filesystem(f)
        tables.append(pq.read_table(path, filesystem=fs))
    return pa.concat_tables(tables) if tables else schema.empty_table()
