"""Stage 1 job: corpora -> tokenized, packed Parquet shards, one Ray Data task per input shard.

    distil prepare --input data/corpus --output data/prepared          # embedded Ray
    ray job submit -- python -m distil.jobs.prepare --input s3://b/corpus --output s3://b/prep

Each input file is one unit of work (``distil.data.prepare.prepare_shard``): it writes its own
output shard and then its completion marker, so a rerun after a crash redoes only the shards
without a marker. The manifest is written last, from the markers.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import ray

from distil import storage
from distil.cluster import init_ray
from distil.config import absolute_paths, job_main, setup_logging
from distil.data.config import PrepareConfig
from distil.data.prepare import (
    build_manifest,
    input_size,
    load_tokenizer_info,
    plan_inputs,
    prepare_shard,
)
from distil.progress import Progress

log = logging.getLogger("distil.prepare")


def run(cfg: PrepareConfig) -> dict[str, Any]:
    setup_logging()
    t0 = time.monotonic()
    cfg = absolute_paths(cfg)
    tok = load_tokenizer_info(cfg.tokenizer)
    plan = plan_inputs(cfg)
    log.info(
        "prepare: %d input shards -> %s (seq_len=%d, cross_document=%s, workers=%d)",
        len(plan),
        storage.redact(cfg.output),
        cfg.seq_len,
        cfg.cross_document,
        cfg.num_workers,
    )
    init_ray()

    def process(item: dict[str, Any]) -> dict[str, Any]:
        setup_logging()
        info = prepare_shard(item["index"], item["url"], item["name"], cfg, tok)
        # only what the driver needs; the full statistics live in the marker
        return {
            "index": info["index"],
            "reused": bool(info.get("reused")),
            "documents": info["documents"],
            "tokens": info["tokens"],
        }

    items = [{"index": i, "url": u, "name": n} for i, u, n in plan]
    # Biggest inputs first so a large file does not start last and leave the other workers idle;
    # the order of work never changes the output (indices come from the sorted input list).
    sizes = {item["url"]: input_size(item["url"]) for item in items}
    items.sort(key=lambda item: (-sizes[item["url"]], item["index"]))
    ds = ray.data.from_items(items, override_num_blocks=len(items)).map(
        process,
        num_cpus=cfg.cpus_per_worker,
        compute=ray.data.TaskPoolStrategy(size=cfg.num_workers),
    )
    reused = 0
    with Progress(
        "prepare", total=len(items), unit="shards", every_s=cfg.log_every_s, log=log
    ) as bar:
        for row in ds.iter_rows():
            reused += int(row["reused"])
            new = not row["reused"]
            bar.update(1, docs=row["documents"] * new, tokens=row["tokens"] * new, reused=1 - new)
    infos = []
    for item in sorted(items, key=lambda item: item["index"]):
        info = storage.read_marker(cfg.output, f"shard-{item['index']:05d}")
        if info is None:
            raise RuntimeError(f"shard {item['index']} ({item['name']}) finished without marker")
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


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return job_main(PrepareConfig, run, __doc__, argv)


if __name__ == "__main__":
    main()
