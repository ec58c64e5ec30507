"""Building a teacher cache, engine-free: plan (key, units), the teacher step of a unit, the
commit of a unit (file, then marker) and the final manifest.

``distil.jobs.teacher_logits`` chains ``units.mask_stage`` (CPU tasks), ``TeacherWorker`` (an
actor pool) and ``commit_stage`` (CPU tasks) as Ray Data operators; ``build_in_process`` runs
the same steps in a plain loop (tests, a GPU box without Ray).
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from distil import storage
from distil.data import shards
from distil.teacher.cache_format import CACHE_KIND, FORMAT_VERSION, cache_key
from distil.teacher.compat import check_teacher
from distil.teacher.config import LogitsConfig
from distil.teacher.load import load_teacher
from distil.teacher.masking import MaskingParams
from distil.teacher.sketch import SKETCH_FILE, sketch_matrix, to_npy
from distil.teacher.units import from_ipc, mask_unit, plan_units, to_ipc, unit_name

log = logging.getLogger(__name__)


@dataclass
class CachePlan:
    key: str
    url: str
    prepared: dict[str, Any]  # the input's manifest
    teacher_sha256: str
    units: list[dict[str, Any]]  # units.plan_units: name, input, start, stop, output
    hidden_size: int | None = None  # the teacher's (sizes the hidden-state sketch matrix)
    family: str | None = None  # the teacher's ``distil.family`` model_type (recorded)

    @property
    def committed(self) -> bool:
        return storage.is_committed(self.url)


def plan_cache(
    cfg: LogitsConfig,
    teacher_sha256: str,
    hidden_size: int | None = None,
    family: str | None = None,
) -> CachePlan:
    """Where the cache for ``cfg`` lives and which units it is made of. ``hidden_size`` (the
    teacher's) is needed with ``hidden_sketch_dims`` > 0, and checked against it here."""
    if cfg.hidden_sketch_dims:
        if hidden_size is None:
            raise ValueError("hidden_sketch_dims > 0: plan_cache needs the teacher's hidden_size")
        sketch_matrix(cfg.seed, cfg.hidden_sketch_dims, hidden_size)  # refuses d > hidden_size
    prepared = shards.open_prepared(cfg.input)
    key = cache_key(
        teacher_sha256, prepared["fingerprint"], cfg.masking(), cfg.sparsity_spec(), cfg.layout()
    )
    url = storage.join(cfg.cache_root, key)
    units = plan_units(prepared, cfg.input, url, cfg.unit_rows)
    return CachePlan(key, url, prepared, teacher_sha256, units, hidden_size, family)


def target_bytes(parquet_bytes: bytes) -> int:
    """Compressed bytes of the sparse-target columns (what a position costs, without the input)."""
    md = pq.ParquetFile(pa.BufferReader(parquet_bytes)).metadata
    total = 0
    for rg in range(md.num_row_groups):
        for c in range(md.num_columns):
            col = md.row_group(rg).column(c)
            if col.path_in_schema.startswith("target_"):
                total += col.total_compressed_size
    return total


class TeacherWorker:
    """Holds one teacher replica; ``compute`` turns one masked unit into its cache table."""

    def __init__(
        self,
        cfg: dict[str, Any],
        teacher_sha256: str,
        prepared: dict[str, Any],
        device: str = "cpu",
    ):
        import torch

        self.cfg = LogitsConfig.model_validate(cfg)
        if self.cfg.torch_threads:
            torch.set_num_threads(self.cfg.torch_threads)
        teacher = load_teacher(self.cfg.teacher, self.cfg.allow_pickle, require_mlm_head=True)
        if teacher.weights_sha256 != teacher_sha256:
            raise RuntimeError(
                f"teacher {self.cfg.teacher} changed during the run (weights hash differs)"
            )
        check_teacher(teacher, self.cfg.teacher, prepared, self.cfg.input)
        # frozen: bf16 weights on CUDA, run without autocast (which would keep layer norms in
        # float32 and re-cast at every matmul)
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        self.model = teacher.model.to(device, dtype)
        self.widths = None
        if self.cfg.compile and device == "cuda":
            from distil.family import mlm_attrs
            from distil.teacher.logits import compile_widths

            # a few fixed batch shapes (compute_unit pads to them): a handful of graphs
            encoder_attr, _ = mlm_attrs(self.model)
            encoder = getattr(self.model, encoder_attr)
            setattr(self.model, encoder_attr, torch.compile(encoder, dynamic=False))
            self.widths = compile_widths(int(prepared["seq_len"]))
        self.masking = MaskingParams.from_config(self.cfg.masking(), prepared)
        self.sparsity = self.cfg.sparsity_spec()
        self.pad_id = int(prepared["special_ids"]["pad"])
        self.sketch = None
        if self.cfg.hidden_sketch_dims:
            hidden = int(self.model.config.hidden_size)
            r = sketch_matrix(self.cfg.seed, self.cfg.hidden_sketch_dims, hidden)
            self.sketch = torch.from_numpy(r).to(device)

    def compute(self, masked: pa.Table) -> pa.Table:
        from distil.teacher.logits import compute_unit

        return compute_unit(
            self.model,
            masked,
            self.masking,
            self.sparsity,
            self.cfg.batch_size,
            self.pad_id,
            self.sketch,
            self.widths,
        )

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Ray Data step 2 (actor pool): masked unit rows -> unit rows with targets."""
        out = [to_ipc(self.compute(from_ipc(p))) for p in batch["payload"]]
        return {"unit": batch["unit"], "payload": np.array(out, dtype=object)}


def copy_breaks(table: pa.Table) -> list[int]:
    """Row offsets where the ``copy`` column changes: a unit is copy-major (``mask_unit``) and
    no row group may span two copies, so a distil epoch reads only its copy's row groups."""
    copies = table.column("copy").to_numpy()
    if np.any(np.diff(copies.astype(np.int64)) < 0):
        raise ValueError("a cache unit's rows must be copy-major (copy ascending)")
    return (np.flatnonzero(np.diff(copies)) + 1).tolist()


def commit_unit(unit: dict[str, Any], table: pa.Table, row_group_rows: int) -> dict[str, Any]:
    """Write the unit's file (staged: all or nothing), then its marker (the commit point: a
    unit without one is recomputed, overwriting any file with the same bytes)."""
    t0 = time.perf_counter()
    buf = io.BytesIO()
    shards.write_table(table, buf, row_group_rows, breaks=copy_breaks(table))
    data = buf.getvalue()
    with storage.staged_file(unit["output"], unit["name"]) as f:
        f.write(data)
    first = table.filter(pc.equal(table.column("copy"), 0))
    # Only deterministic facts (no timings), so a resumed cache directory is byte-identical.
    info = {
        "name": unit["name"],
        "input": unit["input"].rsplit("/", 1)[-1],
        "start": int(unit["start"]),
        "stop": int(unit["stop"]),
        "rows": table.num_rows,
        "sequences": first.num_rows,
        "tokens": int(pc.sum(pc.list_value_length(first.column("input_ids"))).as_py() or 0),
        "positions": int(pc.sum(pc.list_value_length(table.column("positions"))).as_py() or 0),
        "bytes": len(data),
        "target_bytes": target_bytes(data),
    }
    storage.mark_done(unit["output"], unit_name(unit["name"]), info)
    log.debug(
        "%s: %d rows in %.2fs (pid %d)",
        unit["name"],
        info["rows"],
        time.perf_counter() - t0,
        os.getpid(),
    )
    return info


COMMIT_COLUMNS = ("name", "rows", "positions", "tokens", "bytes")


def commit_stage(batch: dict[str, np.ndarray], row_group_rows: int) -> dict[str, np.ndarray]:
    """Ray Data step 3 (CPU tasks): unit rows with targets -> one stats row per committed unit."""
    infos = [
        commit_unit(json.loads(u), from_ipc(p), row_group_rows)
        for u, p in zip(batch["unit"], batch["payload"], strict=True)
    ]
    return {k: np.array([i[k] for i in infos]) for k in COMMIT_COLUMNS}


def pending_units(plan: CachePlan) -> list[dict[str, Any]]:
    """The units of ``plan`` without a marker (all of them on a fresh run)."""
    done = storage.read_markers(plan.url, [unit_name(u["name"]) for u in plan.units])
    return [u for u in plan.units if unit_name(u["name"]) not in done]


def build_in_process(plan: CachePlan, cfg: LogitsConfig, device: str = "cpu") -> dict[str, Any]:
    """The whole stage in this process, no Ray (tests, a GPU box): mask, teacher and commit
    every pending unit in turn, then finalize; returns the manifest."""
    worker = TeacherWorker(cfg.model_dump(), plan.teacher_sha256, plan.prepared, device)
    for unit in pending_units(plan):
        commit_unit(unit, worker.compute(mask_unit(unit, worker.masking)), cfg.row_group_rows)
    return finalize(plan, cfg)


def build_manifest(plan: CachePlan, cfg: LogitsConfig, markers: list[dict[str, Any]]) -> dict:
    """The manifest of a finished cache, from the per-unit markers (in plan order)."""
    prepared = plan.prepared
    rows = sum(m["rows"] for m in markers)
    positions = sum(m["positions"] for m in markers)
    tokens = sum(m["tokens"] for m in markers)
    nbytes = sum(m["bytes"] for m in markers)
    target_total = sum(m["target_bytes"] for m in markers)
    vocab = int(prepared["vocab_size"])
    # positions with teacher targets: the masked ones, or every token of every copy
    target_positions = positions if cfg.kd_positions == "masked" else tokens * cfg.copies
    sketch = None
    if cfg.hidden_sketch_dims:
        sketch = {
            "dims": cfg.hidden_sketch_dims,
            "seed": cfg.seed,
            "hidden_size": plan.hidden_size,
            "dtype": "int8",
            "file": SKETCH_FILE,
        }
    keys = ("name", "input", "start", "stop", "rows", "positions", "tokens", "bytes")
    return {
        "kind": CACHE_KIND,
        "format_version": FORMAT_VERSION,
        "key": plan.key,
        "fingerprint": plan.key,
        "teacher": {
            "ref": cfg.teacher,
            "weights_sha256": plan.teacher_sha256,
            "family": plan.family,
        },
        "data": {"url": cfg.input, "fingerprint": prepared["fingerprint"]},
        "masking": cfg.masking(),
        "sparsity": cfg.sparsity_spec(),
        "layout": cfg.layout(),
        "files": [{k: m[k] for k in (*keys, "target_bytes")} for m in markers],
        "rows": rows,
        "sequences": sum(m["sequences"] for m in markers),
        "positions": positions,
        "kd_positions": cfg.kd_positions,
        "target_positions": target_positions,
        "hidden_sketch": sketch,
        "tokens": tokens,
        "bytes": nbytes,
        "target_bytes": target_total,
        "bytes_per_position": nbytes / max(positions, 1),
        "target_bytes_per_position": target_total / max(positions, 1),
        "bytes_per_token": nbytes / max(tokens, 1),
        "dense_fp16_bytes_per_position": 2 * vocab,
        "seq_len": prepared["seq_len"],
        "vocab_size": vocab,
        "special_ids": prepared["special_ids"],
        "id_dtype": prepared.get("id_dtype", "uint16"),
        "tokenizer": prepared.get("tokenizer"),
    }


def finalize(plan: CachePlan, cfg: LogitsConfig) -> dict[str, Any]:
    """Commit the cache once every unit has its marker; returns the manifest."""
    found = storage.read_markers(plan.url, [unit_name(u["name"]) for u in plan.units])
    markers = []
    for unit in plan.units:
        m = found.get(unit_name(unit["name"]))
        if m is None:
            raise RuntimeError(f"unit {unit['name']} has no completion marker; not committing")
        # row accounting: every input sequence of the unit is in the cache, `copies` times
        n = unit["stop"] - unit["start"]
        if m["sequences"] != n or m["rows"] != n * cfg.copies:
            raise RuntimeError(
                f"{unit['name']}: {m['sequences']} sequences / {m['rows']} rows cached, but its "
                f"input has {n} sequences x {cfg.copies} copies; not committing"
            )
        markers.append(m)
    manifest = build_manifest(plan, cfg, markers)
    if cfg.hidden_sketch_dims:  # R itself, so readers never depend on an RNG's version
        r = sketch_matrix(cfg.seed, cfg.hidden_sketch_dims, plan.hidden_size or 0)
        with storage.staged_file(plan.url, SKETCH_FILE) as f:
            f.write(to_npy(r))
    storage.commit(plan.url, manifest)
    return manifest
