"""Stage 1 job: corpora -> tokenized, packed Parquet shards, one Ray Data task per input shard.

    distil prepare --input data/corpus --output data/prepared          # embedded Ray
    ray job submit -- python -m distil.jobs.prepare --input s3://b/corpus --output s3://b/prep

Each input file is one unit of work (``distil.data.prepare.prepare_shard``): it writes its own
output shard and then its completion marker, so a rerun after a crash redoes only the shards
without a marker. A bz2 wiki dump bigger than ``wiki_range_bytes`` is read as many byte-range
units spread over all workers, then packed into its one shard
(``distil.data.prepare_ranges``). The manifest is written last, from the markers.
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
from distil.data.prepare import build_manifest, input_size
from distil.data.prepare_ranges import pack_ranges, plan_units, prepare_item, range_items
from distil.data.tokenizer import load_tokenizer_info
from distil.ops.cluster import init_ray
from distil.progress import Progress

log = logging.getLogger("distil.prepare")


def run(cfg: PrepareConfig) -> dict[str, Any]:
    setup_logging()
    t0 = time.monotonic()
    cfg = absolute_paths(cfg)
    tok = load_tokenizer_info(cfg.tokenizer)
    units = plan_units(cfg)
    items = [item for unit in units for item in range_items(unit)]
    log.info(
        "prepare: %d input shards (%d read units) -> %s (seq_len=%d, cross_document=%s, "
        "workers=%d)",
        len(units),
        len(items),
        storage.redact(cfg.output),
        cfg.seq_len,
        cfg.cross_document,
        cfg.num_workers,
    )
    init_ray()

    def process(item: dict[str, Any]) -> dict[str, Any]:
        setup_logging()
        info = prepare_item(item, cfg, tok)
        # only what the driver needs; the full statistics live in the marker
        return {
            "index": item["index"],
            "whole": item["range"] is None,
            "reused": bool(info.get("reused")),
            "documents": info["documents"],
            "tokens": info["tokens"],
        }

    def pack(unit: dict[str, Any]) -> dict[str, Any]:
        setup_logging()
        info = pack_ranges(unit, cfg, tok)
        return {"index": unit["index"], "reused": bool(info.get("reused"))}

    # Biggest units first so a large one does not start last and leave the other workers idle;
    # the order of work never changes the output (indices come from the sorted input list).
    sizes = {item["url"]: input_size(item["url"]) for item in items}

    def size(item: dict[str, Any]) -> int:
        if item["range"] is None:
            return sizes[item["url"]]
        start, end = item["ranges"][item["range"]]
        return end - start

    items.sort(key=lambda item: (-size(item), item["index"], item["range"] or 0))
    reused = 0
    with Progress(
        "prepare", total=len(items), unit="units", every_s=cfg.log_every_s, log=log
    ) as bar:
        for row in _map(items, process, cfg).iter_rows():
            reused += int(row["reused"] and row["whole"])
            new = not row["reused"]
            bar.update(1, docs=row["documents"] * new, tokens=row["tokens"] * new, reused=1 - new)
    split = [unit for unit in units if len(unit["ranges"]) > 1]
    if split:
        reused += sum(int(row["reused"]) for row in _map(split, pack, cfg).iter_rows())
    infos = []
    for unit in units:
        info = storage.read_marker(cfg.output, f"shard-{unit['index']:05d}")
        if info is None:
            raise RuntimeError(f"shard {unit['index']} ({unit['name']}) finished without marker")
        infos.append(info)
    manifest = build_manifest(cfg, tok, infos)
    storage.commit(cfg.output, manifest)
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
    log.info("prepare: committed %s", summary)
    return summary


def _map(items: list[dict[str, Any]], fn: Any, cfg: PrepareConfig) -> ray.data.Dataset:
    """``fn`` over ``items`` on ``num_workers`` tasks. Items travel as JSON text: Ray Data would
    turn nested lists (a dump's ranges) and None into Arrow/numpy values."""
    rows = [{"item": json.dumps(item)} for item in items]
    return ray.data.from_items(rows, override_num_blocks=len(rows)).map(
        lambda row: fn(json.loads(row["item"])),
        num_cpus=cfg.cpus_per_worker,
        compute=ray.data.TaskPoolStrategy(size=min(cfg.num_workers, len(rows))),
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return job_main(PrepareConfig, run, __doc__, argv)


if __name__ == "__main__":
    main()
