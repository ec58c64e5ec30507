"""Building a teacher cache, engine-free: plan (key, pending shards), one shard as a unit of
work (skip if its marker exists, else compute, write staged, mark), and the final manifest.

``distil.jobs.teacher_logits`` runs ``ShardWorker`` as a Ray Data actor pool; everything here also
runs in a plain loop (tests, a GPU box without Ray).
"""

from __future__ import annotations

import io
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from distil import storage
from distil.data import shards
from distil.progress import Progress
from distil.teacher.cache import CACHE_KIND, FORMAT_VERSION, cache_key
from distil.teacher.compat import check_teacher
from distil.teacher.config import LogitsConfig
from distil.teacher.load import load_teacher

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 30.0  # seconds between progress lines of one shard in a log


@dataclass
class CachePlan:
    key: str
    url: str
    prepared: dict[str, Any]  # the input's manifest
    teacher_sha256: str
    shard_tasks: list[dict[str, Any]]  # one per input shard: index, name, input url, output dir

    @property
    def committed(self) -> bool:
        return storage.is_committed(self.url)


def plan_cache(cfg: LogitsConfig, teacher_sha256: str) -> CachePlan:
    """Where the cache for ``cfg`` lives and which shards it is made of."""
    prepared = shards.open_prepared(cfg.input)
    key = cache_key(teacher_sha256, prepared["fingerprint"], cfg.masking(), cfg.sparsity_spec())
    url = storage.join(cfg.cache_root, key)
    tasks = [
        {"index": i, "name": f["name"], "input": storage.join(cfg.input, f["name"]), "output": url}
        for i, f in enumerate(prepared["files"])
    ]
    return CachePlan(key, url, prepared, teacher_sha256, tasks)


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


def unit_name(shard_name: str) -> str:
    return shard_name.removesuffix(".parquet")


class ShardWorker:
    """Holds one teacher replica; ``__call__`` turns one input shard into one cache shard."""

    def __init__(
        self,
        cfg: dict[str, Any],
        teacher_sha256: str,
        prepared: dict[str, Any],
        device: str = "cpu",
    ):
        import torch

        from distil.teacher.logits import MaskingParams

        self.cfg = LogitsConfig.model_validate(cfg)
        if self.cfg.torch_threads:
            torch.set_num_threads(self.cfg.torch_threads)
        teacher = load_teacher(self.cfg.teacher, self.cfg.allow_pickle, require_mlm_head=True)
        if teacher.weights_sha256 != teacher_sha256:
            raise RuntimeError(
                f"teacher {self.cfg.teacher} changed during the run (weights hash differs)"
            )
        check_teacher(teacher, self.cfg.teacher, prepared, self.cfg.input)
        self.model = teacher.model.to(device)
        self.masking = MaskingParams.from_config(self.cfg.masking(), prepared)
        self.sparsity = self.cfg.sparsity_spec()
        self.pad_id = int(prepared["special_ids"]["pad"])
        self.vocab_size = int(prepared["vocab_size"])

    def process(self, task: dict[str, Any]) -> dict[str, Any]:
        from distil.teacher.logits import compute_shard

        unit = unit_name(task["name"])
        done = storage.read_marker(task["output"], unit)
        if done is not None:
            return {**done, "skipped": True}
        table = shards.read_table(task["input"])
        t0 = time.perf_counter()
        total = table.num_rows * self.masking.copies
        with Progress(task["name"], total, "rows", every_s=PROGRESS_EVERY_S, log=log) as bar:
            out, stats = compute_shard(
                self.model,
                table,
                self.masking,
                self.sparsity,
                self.cfg.batch_size,
                self.pad_id,
                progress=bar.update,
            )
        buf = io.BytesIO()
        shards.write_table(out, buf)
        data = buf.getvalue()
        with storage.staged_file(task["output"], task["name"]) as f:
            f.write(data)
        nbytes = len(data)
        # The marker holds only deterministic facts (no timings), so a resumed cache directory
        # is byte-identical to an uninterrupted one.
        info = {
            "name": task["name"],
            "input": task["input"].rsplit("/", 1)[-1],
            "rows": stats["rows"],
            "sequences": stats["sequences"],
            "tokens": stats["tokens"],
            "positions": stats["positions"],
            "bytes": int(nbytes),
            "target_bytes": target_bytes(data),
        }
        storage.mark_done(task["output"], unit, info)
        log.info(
            "%s: %d rows, %d positions in %.1fs (pid %d)",
            task["name"],
            stats["rows"],
            stats["positions"],
            time.perf_counter() - t0,
            os.getpid(),
        )
        return {**info, "skipped": False, "seconds": time.perf_counter() - t0}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Ray Data entry point: a batch of shard tasks (batch_size=1 in the job)."""
        keys = ("index", "name", "input", "output")
        results = [
            self.process(
                {k: batch[k][i].item() if k == "index" else str(batch[k][i]) for k in keys}
            )
            for i in range(len(batch["name"]))
        ]
        return {
            k: np.array([r[k] for r in results])
            for k in ("name", "rows", "positions", "tokens", "bytes", "skipped")
        }


def build_manifest(plan: CachePlan, cfg: LogitsConfig, markers: list[dict[str, Any]]) -> dict:
    """The manifest of a finished cache, from the per-shard markers (in shard order)."""
    prepared = plan.prepared
    rows = sum(m["rows"] for m in markers)
    positions = sum(m["positions"] for m in markers)
    tokens = sum(m["tokens"] for m in markers)
    nbytes = sum(m["bytes"] for m in markers)
    target_total = sum(m["target_bytes"] for m in markers)
    vocab = int(prepared["vocab_size"])
    return {
        "kind": CACHE_KIND,
        "format_version": FORMAT_VERSION,
        "key": plan.key,
        "fingerprint": plan.key,
        "teacher": {"ref": cfg.teacher, "weights_sha256": plan.teacher_sha256},
        "data": {"url": cfg.input, "fingerprint": prepared["fingerprint"]},
        "masking": cfg.masking(),
        "sparsity": cfg.sparsity_spec(),
        "files": [
            {
                k: m[k]
                for k in ("name", "input", "rows", "positions", "tokens", "bytes", "target_bytes")
            }
            for m in markers
        ],
        "rows": rows,
        "sequences": sum(m["sequences"] for m in markers),
        "positions": positions,
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
    """Commit the cache once every shard has its marker; returns the manifest."""
    markers = []
    for task, entry in zip(plan.shard_tasks, plan.prepared["files"], strict=True):
        m = storage.read_marker(plan.url, unit_name(task["name"]))
        if m is None:
            raise RuntimeError(f"shard {task['name']} has no completion marker; not committing")
        # row accounting: every input sequence is in the cache, `copies` times
        if m["sequences"] != entry["rows"] or m["rows"] != entry["rows"] * cfg.copies:
            raise RuntimeError(
                f"{task['name']}: {m['sequences']} sequences / {m['rows']} rows cached, but the "
                f"input has {entry['rows']} sequences x {cfg.copies} copies; not committing"
            )
        markers.append(m)
    manifest = build_manifest(plan, cfg, markers)
    storage.commit(plan.url, manifest)
    return manifest
