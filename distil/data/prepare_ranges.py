"""A wiki dump split into byte ranges: many read units, one output shard.

``plan_units`` turns the input list into units: a whole file, or, for a bz2 wiki dump bigger
than ``wiki_range_bytes``, its ranges (``distil.data.readers.wiki_ranges``). A range unit
(``prepare_range``) reads, extracts and tokenizes its pages and stores the token pieces as a
part (``_parts/shard-NNNNN/range-KKKKK.npz``) with a marker; ``pack_ranges`` then feeds the
parts in range order to one ``ShardWriter``, renumbers dead-letter offsets to page ordinals of
the whole dump and writes the shard's marker. Reading, extraction and tokenization (nearly all
the CPU) run on every worker; packing a whole dump's tokens is the only serial tail, and the
bytes are those of a single unit whatever the range size or worker count.

``run_serial`` runs every unit of the stage in this process, one after another: the planner of
units is here, so the serial runner is too (``distil.data.prepare`` holds the per-shard steps
and imports nothing from this module).
"""

from __future__ import annotations

import io
import logging
import time
from typing import Any

import numpy as np

from distil import storage
from distil.data.config import PrepareConfig
from distil.data.prepare import (
    build_manifest,
    finish_shard,
    input_identity,
    plan_inputs,
    prepare_shard,
    reusable_marker,
    shard_key,
)
from distil.data.readers import detect_format
from distil.data.readers.wiki_ranges import plan_ranges, read_wiki_range
from distil.data.tokenize_pack import ShardWriter, Tally, tokenize_records
from distil.data.tokenizer import TokenizerInfo, load_tokenizer_info
from distil.progress import Progress

log = logging.getLogger("distil.prepare")

PARTS = "_parts"


def plan_units(cfg: PrepareConfig) -> list[dict[str, Any]]:
    """One dict per input file (``index``, ``url``, ``name``, ``ranges``: ``[[start, end], …]``,
    more than one only for a split wiki dump), in input order."""
    units = []
    for index, url, name in plan_inputs(cfg):
        fmt = cfg.format if cfg.format != "auto" else detect_format(url)
        ranges = [[0, 0]]
        if fmt == "wiki" and url.lower().endswith(".bz2"):
            ranges = [list(r) for r in plan_ranges(url, cfg.wiki_range_bytes)]
        units.append({"index": index, "url": url, "name": name, "ranges": ranges})
    return units


def range_items(unit: dict[str, Any]) -> list[dict[str, Any]]:
    """The read units of one input: itself, or one per range (``range``: its number)."""
    if len(unit["ranges"]) == 1:
        return [{**unit, "range": None}]
    return [{**unit, "range": k} for k in range(len(unit["ranges"]))]


def _range_unit(index: int, k: int) -> str:
    return f"shard-{index:05d}-range-{k:05d}"


def prepare_item(item: dict[str, Any], cfg: PrepareConfig, tok: TokenizerInfo) -> dict[str, Any]:
    """Run one read unit: a whole file (its shard) or one range (its part)."""
    if item["range"] is None:
        return prepare_shard(item["index"], item["url"], item["name"], cfg, tok)
    return prepare_range(item, cfg, tok)


def prepare_range(item: dict[str, Any], cfg: PrepareConfig, tok: TokenizerInfo) -> dict[str, Any]:
    index, k = item["index"], item["range"]
    start, end = item["ranges"][k]
    identity = input_identity(item["url"])
    shard_done = reusable_marker(cfg, tok, f"shard-{index:05d}", identity)
    unit = _range_unit(index, k)
    done = shard_done or reusable_marker(cfg, tok, unit, identity)
    if done and (shard_done or done.get("bounds") == [start, end]):
        return {**done, "range": k, "reused": True}
    t0 = time.monotonic()
    label = f"{item['name']}[{k + 1}/{len(item['ranges'])}]"
    ids: list[np.ndarray] = []
    new_doc: list[bool] = []
    tokens = [0]

    def add(piece: list[int], new_document: bool) -> None:
        ids.append(np.asarray(piece, dtype=np.int32))
        new_doc.append(new_document)
        tokens[0] += len(piece)

    records = read_wiki_range(item["url"], item["name"], start, end)
    with Progress(label, unit="docs", every_s=cfg.log_every_s, log=log) as progress:
        tally = tokenize_records(records, cfg, tok, add, progress, lambda: tokens[0])
    part = f"{PARTS}/shard-{index:05d}/range-{k:05d}.npz"
    with storage.staged_file(cfg.output, part) as f:
        buf = io.BytesIO()
        lengths = np.array([len(a) for a in ids], dtype=np.int64)
        flat = np.concatenate(ids) if ids else np.zeros(0, np.int32)
        np.savez(buf, ids=flat, lengths=lengths, new_doc=np.array(new_doc, dtype=bool))
        f.write(buf.getvalue())
    info = {
        "key": shard_key(cfg, tok),
        "input_identity": identity,
        "bounds": [start, end],
        "part": part,
        "tally": tally.to_dict(),
        "documents": tally.stats["documents"],
        "tokens": tokens[0],
        "seconds": round(time.monotonic() - t0, 3),
    }
    storage.mark_done(cfg.output, unit, info)
    return {**info, "range": k, "reused": False}


def pack_ranges(unit: dict[str, Any], cfg: PrepareConfig, tok: TokenizerInfo) -> dict[str, Any]:
    """Pack a split dump's parts, in range order, into its one output shard."""
    index = unit["index"]
    identity = input_identity(unit["url"])
    done = reusable_marker(cfg, tok, f"shard-{index:05d}", identity)
    if done:
        return done
    t0 = time.monotonic()
    tally = Tally()
    with ShardWriter(index, cfg, tok) as w:
        for k, bounds in enumerate(unit["ranges"]):
            marker = storage.read_marker(cfg.output, _range_unit(index, k))
            if marker is None or marker.get("bounds") != bounds:
                raise RuntimeError(f"{unit['name']}: range {k} {bounds} finished without a part")
            # dead-letter offsets become page ordinals of the whole dump
            tally.merge(marker["tally"], offset_shift=tally.stats["records"])
            part = np.load(io.BytesIO(storage.read_bytes(storage.join(cfg.output, marker["part"]))))
            flat, lengths, new_doc = part["ids"], part["lengths"], part["new_doc"]
            ends = np.cumsum(lengths)
            for piece_end, n, new in zip(ends, lengths, new_doc, strict=True):
                w.add(flat[piece_end - n : piece_end], bool(new))
    sha = storage.sha256_url(unit["url"])
    info = finish_shard(w, tally, unit["name"], identity, sha, time.monotonic() - t0)
    storage.remove(storage.join(cfg.output, PARTS, f"shard-{index:05d}"))
    return info


def run_serial(cfg: PrepareConfig) -> dict[str, Any]:
    """The whole stage in this process, one unit after another (no Ray): for tests, benchmarks
    and small inputs. Same bytes as the Ray job. Returns the committed manifest."""
    tok = load_tokenizer_info(cfg.tokenizer)
    infos = []
    for unit in plan_units(cfg):
        results = [prepare_item(item, cfg, tok) for item in range_items(unit)]
        infos.append(results[0] if len(results) == 1 else pack_ranges(unit, cfg, tok))
    manifest = build_manifest(cfg, tok, infos)
    storage.commit(cfg.output, manifest)
    return manifest
