"""Stage 1 job: corpora -> tokenized, packed Parquet shards, one Ray Data task per input shard.

    distil prepare --input data/corpus --output data/prepared          # embedded Ray
    ray job submit -- python -m distil.jobs.prepare --input s3://b/corpus --output s3://b/prep

Each input file is one unit of work (``distil.data.prepare.prepare_shard``): it writes its own
output shard and then its completion marker, so a rerun after a crash redoes only the shards
without a marker. A bz2 wiki dump bigger than ``wiki_range_bytes`` is read as many byte-range
units spread over all workers, then packed into its one shard
(``distil.data.prepare_ranges``). With ``--dedup`` (the default) every unit also writes its
documents' signatures; one task per MinHash band (and one for the exact hash) groups buckets,
the driver resolves clusters, then one task per input packs its shard without the removed
documents (``distil.data.dedup``). The manifest is written last, from the markers.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import ray

from distil import storage
from distil.config import absolute_paths, job_main, setup_logging
from distil.data.config import PrepareConfig
from distil.data.prepare import input_size
from distil.data.prepare_ranges import run_stage
from distil.data.tokenizer import load_tokenizer_info
from distil.ops.cluster import init_ray
from distil.progress import Progress

log = logging.getLogger("distil.prepare")


def run(cfg: PrepareConfig) -> dict[str, Any]:
    setup_logging()
    t0 = time.monotonic()
    cfg = absolute_paths(cfg)
    tok = load_tokenizer_info(cfg.tokenizer)
    log.info(
        "prepare: %s -> %s (seq_len=%d, cross_document=%s, dedup=%s, workers=%d)",
        [storage.redact(u) for u in cfg.input],
        storage.redact(cfg.output),
        cfg.seq_len,
        cfg.cross_document,
        cfg.dedup,
        cfg.num_workers,
    )
    init_ray()

    def mapper(phase: str, fn: Any, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if not items:
            return []
        if phase == "read":
            # Biggest units first so a large one does not start last and leave the other
            # workers idle; the order of work never changes the output (indices come from the
            # sorted input list).
            sizes = {item["url"]: input_size(item["url"]) for item in items}

            def size(item: dict[str, Any]) -> int:
                if item["range"] is None or len(item["ranges"]) == 1:
                    return sizes[item["url"]]
                start, end = item["ranges"][item["range"]]
                return end - start

            items = sorted(items, key=lambda it: (-size(it), it["index"], it["range"] or 0))
        out = []
        with Progress(
            f"prepare {phase}", total=len(items), unit="units", every_s=cfg.log_every_s, log=log
        ) as bar:
            for row in _map(items, fn, cfg).iter_rows():
                r = json.loads(row["out"])
                new = not r["reused"]
                bar.update(1, docs=r["documents"] * new, tokens=r["tokens"] * new, reused=1 - new)
                out.append(r)
        return out

    manifest, reused = run_stage(cfg, tok, mapper)
    elapsed = time.monotonic() - t0
    summary = {
        "output": storage.redact(cfg.output),
        "shards": len(manifest["files"]),
        "shards_reused": reused,
        "rows": manifest["rows"],
        "tokens": manifest["tokens"],
        "documents": manifest["records"]["documents"],
        "padding_fraction": round(manifest["padding_fraction"], 4),
        "dead_letter": manifest["dead_letter"]["count"],
        "fingerprint": manifest["fingerprint"],
        "seconds": round(elapsed, 1),
        "tokens_per_s": round(manifest["tokens"] / max(elapsed, 1e-9)),
    }
    if cfg.dedup:
        d = manifest["dedup"]
        summary["dedup"] = {k: d[k] for k in ("exact_removed", "near_removed", "documents_kept")}
    log.info("prepare: committed %s", summary)
    return summary


def _map(items: list[dict[str, Any]], fn: Any, cfg: PrepareConfig) -> ray.data.Dataset:
    """``fn`` over ``items`` on ``num_workers`` tasks. Items and results travel as JSON text:
    Ray Data would turn nested lists (a dump's ranges) and None into Arrow/numpy values."""

    def task(row: dict[str, Any]) -> dict[str, Any]:
        setup_logging()
        return {"out": json.dumps(fn(json.loads(row["item"])))}

    rows = [{"item": json.dumps(item)} for item in items]
    return ray.data.from_items(rows, override_num_blocks=len(rows)).map(
        task,
        num_cpus=cfg.cpus_per_worker,
        compute=ray.data.TaskPoolStrategy(size=min(cfg.num_workers, len(rows))),
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return job_main(PrepareConfig, run, __doc__, argv)


if __name__ == "__main__":
    main()
