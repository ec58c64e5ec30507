"""Input files as read units, their parts, deduplication, and the whole stage's order of work.

``plan_units`` turns the input list into units: a whole file, or, for a bz2 wiki dump bigger
than ``wiki_range_bytes``, its ranges (``distil.data.readers.wiki_ranges``). A range unit
(``prepare_range``) reads, extracts and tokenizes its pages and stores the token pieces as a
part (``_parts/shard-NNNNN/range-KKKKK.parquet``) with a marker; ``pack_parts`` then feeds the
parts in range order to one ``ShardWriter``, renumbers dead-letter offsets to page ordinals of
the whole dump and writes the shard's marker. Reading, extraction and tokenization (nearly all
the CPU) run on every worker; packing a whole dump's tokens is the only serial tail, and the
bytes are those of a single unit whatever the range size or worker count.

With ``--dedup`` (the default) every input is read that way, a whole file being its one range,
and each read unit also writes its documents' signatures (``distil.data.dedup``). Between
reading and packing, one task per MinHash band and one for the exact hash group the buckets;
``dedup.resolve`` clusters them and writes the removed documents' list, which ``pack_parts``
skips. With ``--no-dedup`` a whole file is packed while it is read (``prepare_shard``).

``run_stage`` is that order of work over a ``Mapper`` (``run_serial``: one item after another in
this process; the Ray job: Ray Data tasks), so both run the same steps and write the same bytes.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from distil import storage
from distil.data import dedup
from distil.data.config import PrepareConfig
from distil.data.prepare import (
    build_manifest,
    file_records,
    finish_shard,
    input_identity,
    plan_inputs,
    prepare_shard,
    reusable_marker,
    shard_key,
)
from distil.data.readers import detect_format
from distil.data.readers.wiki_ranges import plan_ranges, read_wiki_range
from distil.data.tokenize_pack import (
    PartWriter,
    ShardWriter,
    Tally,
    iter_part,
    release_arrow_memory,
    tokenize_records,
)
from distil.data.tokenizer import TokenizerInfo, load_tokenizer_info
from distil.progress import Progress

log = logging.getLogger("distil.prepare")

PARTS = "_parts"

# (phase, function, items) -> the function's results, in any order: how a run spreads its work
# ("read": read units, "dedup": bands, "resolve": one item, "pack": input files). Results are
# small dicts (``brief``), so they cross process boundaries cheaply.
Mapper = Callable[[str, Callable[[dict[str, Any]], dict[str, Any]], list[dict[str, Any]]], list]


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


def range_items(unit: dict[str, Any], parts: bool = False) -> list[dict[str, Any]]:
    """The read units of one input: itself, or one per range (``range``: its number). With
    ``parts`` (a deduplicated run) a whole file is a part-writing unit too (range 0)."""
    if len(unit["ranges"]) == 1 and not parts:
        return [{**unit, "range": None}]
    return [{**unit, "range": k} for k in range(len(unit["ranges"]))]


def range_unit(index: int, k: int) -> str:
    return f"shard-{index:05d}-range-{k:05d}"


def prepare_item(item: dict[str, Any], cfg: PrepareConfig, tok: TokenizerInfo) -> dict[str, Any]:
    """Run one read unit: a whole file (its shard) or one range (its part)."""
    if item["range"] is None:
        return prepare_shard(item["index"], item["url"], item["name"], cfg, tok)
    return prepare_range(item, cfg, tok)


def prepare_range(item: dict[str, Any], cfg: PrepareConfig, tok: TokenizerInfo) -> dict[str, Any]:
    """Read one range (or, in a deduplicated run, a whole file) into a part, plus its
    signatures with ``--dedup``; the marker records the range's tally and document count."""
    index, k = item["index"], item["range"]
    start, end = item["ranges"][k]
    whole = len(item["ranges"]) == 1
    identity = input_identity(item["url"])
    unit = range_unit(index, k)
    part = f"{PARTS}/shard-{index:05d}/range-{k:05d}.parquet"
    sig = dedup.sig_name(index, k)
    if not cfg.dedup:  # a deduplicated run needs every range's signatures, packed or not
        shard_done = reusable_marker(cfg, tok, f"shard-{index:05d}", identity)
        if shard_done:
            return {**shard_done, "range": k, "reused": True}
    done = reusable_marker(cfg, tok, unit, identity)
    if (
        done
        and done.get("bounds") == [start, end]
        and (not cfg.dedup or storage.exists(storage.join(cfg.output, part)))
        and (not cfg.dedup or storage.exists(storage.join(cfg.output, sig)))
    ):
        return {**done, "range": k, "reused": True}
    t0 = time.monotonic()
    hasher: list = []
    if whole:
        records = file_records(item["url"], item["name"], cfg, hasher)
        label = item["name"]
    else:
        records = read_wiki_range(item["url"], item["name"], start, end)
        label = f"{item['name']}[{k + 1}/{len(item['ranges'])}]"
    documents = None
    with contextlib.ExitStack() as stack:
        progress = stack.enter_context(
            Progress(label, unit="docs", every_s=cfg.log_every_s, log=log)
        )
        writer = stack.enter_context(PartWriter(cfg.output, part, tok.vocab_size))
        if cfg.dedup:
            signatures = stack.enter_context(dedup.SignatureWriter(cfg.output, sig))
            signer = dedup.Signer(signatures.add)
            records = signer.observe(records)
        tally = tokenize_records(records, cfg, tok, writer.add, progress, lambda: writer.tokens)
        if cfg.dedup:
            documents = signer.documents
    if documents is not None and documents != tally.stats["documents"]:
        raise RuntimeError(f"{label}: {documents} signatures for {tally.stats['documents']} docs")
    info = {
        "key": shard_key(cfg, tok),
        "input_identity": identity,
        "bounds": [start, end],
        "part": part,
        "signatures": sig if cfg.dedup else None,
        "input_sha256": hasher[0].hexdigest() if hasher else None,
        "tally": tally.to_dict(),
        "documents": tally.stats["documents"],
        "tokens": writer.tokens,
        "seconds": round(time.monotonic() - t0, 3),
    }
    storage.mark_done(cfg.output, unit, info)
    release_arrow_memory()
    return {**info, "range": k, "reused": False}


def _removed_key(removed: np.ndarray) -> str:
    return storage.sha256_bytes(np.asarray(removed, np.int64).tobytes())[:16]


def shard_done(
    unit: dict[str, Any], cfg: PrepareConfig, tok: TokenizerInfo, removed: np.ndarray | None
) -> dict[str, Any] | None:
    """The input's shard marker if it is reusable: same input, config, tokenizer and (with
    ``--dedup``) the same removed documents."""
    extra = None if removed is None else {"dedup_removed": _removed_key(removed)}
    identity = input_identity(unit["url"])
    return reusable_marker(cfg, tok, f"shard-{unit['index']:05d}", identity, extra)


def pack_parts(unit: dict[str, Any], cfg: PrepareConfig, tok: TokenizerInfo) -> dict[str, Any]:
    """Pack an input's parts, in range order, into its one output shard, leaving out the
    documents deduplication removed."""
    index = unit["index"]
    removed = dedup.removed_ordinals(cfg.output, index) if cfg.dedup else None
    done = shard_done(unit, cfg, tok, removed)
    if done:
        return done
    identity = input_identity(unit["url"])
    t0 = time.monotonic()
    tally = Tally()
    sha = None
    last = -1  # ordinal of the document the previous piece belongs to
    with ShardWriter(index, cfg, tok) as w:
        for k, bounds in enumerate(unit["ranges"]):
            marker = storage.read_marker(cfg.output, range_unit(index, k))
            if marker is None or marker.get("bounds") != bounds:
                raise RuntimeError(f"{unit['name']}: range {k} {bounds} finished without a part")
            # dead-letter offsets become page ordinals of the whole dump
            tally.merge(marker["tally"], offset_shift=tally.stats["records"])
            sha = marker.get("input_sha256")
            for flat, lengths, new_doc in iter_part(storage.join(cfg.output, marker["part"])):
                ordinal = last + np.cumsum(new_doc)
                last = int(ordinal[-1]) if len(ordinal) else last
                keep = ~np.isin(ordinal, removed) if removed is not None and len(removed) else None
                ends = np.cumsum(lengths)
                for i, (piece_end, n, new) in enumerate(zip(ends, lengths, new_doc, strict=True)):
                    if keep is None or keep[i]:
                        w.add(flat[piece_end - n : piece_end], bool(new))
    if sha is None or len(unit["ranges"]) > 1:
        sha = storage.sha256_url(unit["url"])
    extra = None
    if removed is not None:
        extra = {"dedup_removed": _removed_key(removed), "documents_removed": len(removed)}
    info = finish_shard(w, tally, unit["name"], identity, sha, time.monotonic() - t0, extra)
    storage.remove(storage.join(cfg.output, PARTS, f"shard-{index:05d}"))
    release_arrow_memory()
    return info


def signature_sources(cfg: PrepareConfig, units: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every read unit's signature file with the id of its first document, in id order."""
    names = [range_unit(u["index"], k) for u in units for k in range(len(u["ranges"]))]
    markers = storage.read_markers(cfg.output, names)
    out = []
    for u in units:
        ordinal = 0
        for k in range(len(u["ranges"])):
            m = markers.get(range_unit(u["index"], k))
            if m is None or not m.get("signatures"):
                raise RuntimeError(f"{u['name']}: range {k} finished without signatures")
            if m["documents"]:
                out.append(
                    {
                        "base": int(dedup.doc_id(u["index"], ordinal)),
                        "docs": m["documents"],
                        "url": storage.join(cfg.output, m["signatures"]),
                    }
                )
            ordinal += m["documents"]
    return out


def dedup_key(cfg: PrepareConfig, tok: TokenizerInfo, units: list[dict[str, Any]]) -> str:
    """What the bands and the removed list depend on: every input, the config, the tokenizer."""
    inputs = [(u["index"], u["name"], input_identity(u["url"])) for u in units]
    return storage.fingerprint({"shard": shard_key(cfg, tok), "inputs": inputs})


def brief(info: dict[str, Any]) -> dict[str, Any]:
    """What a driver needs of a unit's result (the full statistics live in its marker)."""
    return {
        "reused": bool(info.get("reused")),
        "documents": int(info.get("documents") or 0),
        "tokens": int(info.get("tokens") or 0),
    }


def run_units(
    cfg: PrepareConfig, tok: TokenizerInfo, units: list[dict[str, Any]], mapper: Mapper
) -> tuple[list[dict[str, Any]], dict[str, Any] | None, int]:
    """Every step of the stage over ``mapper``: ``(shard markers, dedup summary, shards
    reused)``."""
    reused = 0
    summary = None
    if not cfg.dedup:
        items = [item for unit in units for item in range_items(unit)]

        def read(item: dict[str, Any]) -> dict[str, Any]:
            return {**brief(prepare_item(item, cfg, tok)), "whole": item["range"] is None}

        reused += sum(r["reused"] and r["whole"] for r in mapper("read", read, items))
        split = [unit for unit in units if len(unit["ranges"]) > 1]
        reused += sum(
            r["reused"] for r in mapper("pack", lambda u: brief(pack_parts(u, cfg, tok)), split)
        )
    else:
        key = dedup_key(cfg, tok, units)
        summary = storage.read_marker(cfg.output, "dedup")
        resolved = summary is not None and summary.get("key") == key
        todo = units
        if resolved:  # the removed list stands: only inputs whose shard is not done are read
            todo = [
                u
                for u in units
                if not shard_done(u, cfg, tok, dedup.removed_ordinals(cfg.output, u["index"]))
            ]
        items = [item for unit in todo for item in range_items(unit, parts=True)]
        mapper("read", lambda it: brief(prepare_item(it, cfg, tok)), items)
        if not resolved:
            sources = signature_sources(cfg, units)
            threshold = cfg.dedup_threshold
            bands = [{"band": b} for b in range(dedup.BANDS + 1)]
            mapper(
                "dedup",
                lambda it: brief(dedup.run_band(cfg.output, it["band"], sources, key, threshold)),
                bands,
            )
            names = {u["index"]: u["name"] for u in units}
            # a task of its own, like the bands: its memory (the edges) is not the driver's
            mapper("resolve", lambda _: brief(dedup.resolve(cfg.output, sources, names, key)), [{}])
            summary = storage.read_marker(cfg.output, "dedup")
        reused += sum(
            r["reused"] for r in mapper("pack", lambda u: brief(pack_parts(u, cfg, tok)), units)
        )
    infos = []
    markers = storage.read_markers(cfg.output, [f"shard-{u['index']:05d}" for u in units])
    for unit in units:
        info = markers.get(f"shard-{unit['index']:05d}")
        if info is None:
            raise RuntimeError(f"shard {unit['index']} ({unit['name']}) finished without marker")
        infos.append(info)
    return infos, summary, reused


def run_stage(cfg: PrepareConfig, tok: TokenizerInfo, mapper: Mapper) -> tuple[dict[str, Any], int]:
    """Plan, run every unit over ``mapper``, commit the manifest (last), then drop what only
    the run needed. Returns ``(manifest, shards reused)``."""
    units = plan_units(cfg)
    log.info(
        "prepare: %d input files, %d read units%s",
        len(units),
        sum(len(range_items(u, parts=cfg.dedup)) for u in units),
        ", deduplicated" if cfg.dedup else "",
    )
    infos, summary, reused = run_units(cfg, tok, units, mapper)
    manifest = build_manifest(cfg, tok, infos, summary)
    storage.commit(cfg.output, manifest)
    storage.remove(storage.join(cfg.output, PARTS))  # every part was removed once packed
    dedup.cleanup(cfg.output, cfg.dedup)
    return manifest, reused


def run_serial(cfg: PrepareConfig) -> dict[str, Any]:
    """The whole stage in this process, one unit after another (no Ray): for tests, benchmarks
    and small inputs. Same bytes as the Ray job. Returns the committed manifest."""
    tok = load_tokenizer_info(cfg.tokenizer)
    manifest, _ = run_stage(cfg, tok, lambda phase, fn, items: [fn(item) for item in items])
    return manifest
