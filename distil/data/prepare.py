"""Stage 1 steps, engine-free: one input shard -> one packed Parquet shard + completion marker.

``prepare_shard`` is the unit of work the Ray job maps over for a whole input file. It streams
records from the reader, tokenizes them in batches and packs rows (``distil.data.tokenize_pack``),
writes the output shard through ``storage.staged_file`` row group by row group and, last, the
shard's marker (``finish_shard``). A big bz2 wiki dump is read as byte ranges instead
(``distil.data.prepare_ranges``), with the same bytes. ``build_manifest`` turns the markers into
the committed manifest. Output bytes depend only on the input file, its index in the sorted input
list and the config — never on the worker count or range size. The tokenizer
(``TokenizerInfo``, ``load_tokenizer_info``) lives in ``distil.data.tokenizer``.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from distil import storage
from distil.data import dedup, shards
from distil.data.config import PrepareConfig
from distil.data.readers import (
    EXTRACTOR_VERSION,
    HashingReader,
    Record,
    detect_format,
    read_records,
)
from distil.data.tokenize_pack import ShardWriter, Tally, tokenize_records
from distil.data.tokenizer import TokenizerInfo
from distil.progress import Progress

log = logging.getLogger("distil.prepare")

DEAD_LETTER_PATTERN = "dead_letter/shard-{index:05d}.jsonl"


def packing_config(cfg: PrepareConfig) -> dict[str, Any]:
    """The config fields that change output bytes (and nothing else: not workers, not paths).

    With ``--no-dedup`` there is no ``dedup`` entry, so such outputs keep the fingerprints
    (and teacher caches) they had before deduplication existed."""
    out = {
        "seq_len": cfg.seq_len,
        "cross_document": cfg.cross_document,
        "format": cfg.format,
        "text_column": cfg.text_column,
        "id_column": cfg.id_column,
        "max_line_bytes": cfg.max_line_bytes,
        "shard_pattern": shards.SHARD_PATTERN,
        "row_group_rows": shards.ROW_GROUP_ROWS,
        "wiki_extractor": EXTRACTOR_VERSION,  # new extraction rules = new bytes: no reuse
    }
    if cfg.dedup:
        out["dedup"] = dedup.settings(cfg.dedup_threshold)
    return out


def shard_key(cfg: PrepareConfig, tok: TokenizerInfo) -> str:
    """What a completion marker must match to be reused by a rerun."""
    return storage.fingerprint({"packing": packing_config(cfg), "tokenizer": tok.fingerprint})


def input_identity(url: str) -> dict[str, Any]:
    """Cheap identity of an input file (size + etag/mtime) to detect a changed input on rerun."""
    fs, path = storage.get_fs(url)
    info = fs.info(path)
    ident = {"size": int(info.get("size") or 0)}
    for key in ("ETag", "etag", "mtime", "LastModified"):
        if info.get(key) is not None:
            ident[key.lower()] = str(info[key])
            break
    return ident


def input_size(url: str) -> int:
    fs, path = storage.get_fs(url)
    return int(fs.size(path) or 0)


def finish_shard(
    w: ShardWriter,
    tally: Tally,
    input_name: str,
    identity: dict[str, Any],
    sha: str,
    seconds: float,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Dead letters, statistics and, last, the completion marker of one output shard
    (``extra``: more fields for the marker, e.g. what deduplication removed from it)."""
    cfg, index = w.cfg, w.index
    dead_name = None
    if tally.dead:
        dead_name = DEAD_LETTER_PATTERN.format(index=index)
        with storage.staged_file(cfg.output, dead_name) as f:
            for rec in tally.dead:
                f.write((json.dumps(rec, sort_keys=True) + "\n").encode())
    nonzero = np.nonzero(w.counts)[0]
    info = {
        "key": shard_key(cfg, w.tok),
        "index": index,
        "name": w.name,
        "input": input_name,
        "input_identity": identity,
        "input_sha256": sha,
        "rows": w.rows,
        "tokens": w.tokens,
        **tally.stats,
        "dead_letter_by_reason": tally.by_reason,
        "skipped_by_reason": tally.skipped_by_reason,
        "dead_letter_file": dead_name,
        "token_counts": {str(int(i)): int(w.counts[i]) for i in nonzero},
        "seconds": round(seconds, 3),
        **(extra or {}),
    }
    log.info(
        "%s -> %s: %d docs, %d rows, %d tokens, %d dead letters in %.1fs (%.0f tokens/s)",
        input_name,
        w.name,
        tally.stats["documents"],
        w.rows,
        w.tokens,
        tally.stats["dead_letter"],
        seconds,
        w.tokens / max(seconds, 1e-9),
    )
    storage.mark_done(cfg.output, f"shard-{index:05d}", info)
    return info


def reusable_marker(
    cfg: PrepareConfig,
    tok: TokenizerInfo,
    unit: str,
    identity: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """The unit's marker if it was written for the same input, config and tokenizer (and has
    the ``extra`` fields' values)."""
    done = storage.read_marker(cfg.output, unit)
    wanted = {"key": shard_key(cfg, tok), "input_identity": identity, **(extra or {})}
    if done and all(done.get(k) == v for k, v in wanted.items()):
        return {**done, "reused": True}
    return None


def file_records(
    url: str, name: str, cfg: PrepareConfig, hasher: list[HashingReader]
) -> Iterator[Record]:
    """The records of one whole input file, read as the config says (``hasher``: see
    ``read_records``)."""
    fmt = cfg.format if cfg.format != "auto" else (detect_format(url) or "auto")
    return read_records(
        url,
        name,
        fmt,
        text_column=cfg.text_column,
        id_column=cfg.id_column,
        max_line_bytes=cfg.max_line_bytes,
        hasher=hasher,
    )


def prepare_shard(
    index: int, input_url: str, input_name: str, cfg: PrepareConfig, tok: TokenizerInfo
) -> dict[str, Any]:
    """Process one whole input file; returns (and records as its marker) its statistics.

    Skips the work if a marker for the same input, config and tokenizer already exists.
    """
    identity = input_identity(input_url)
    done = reusable_marker(cfg, tok, f"shard-{index:05d}", identity)
    if done:
        log.info("%s: already done (marker shard-%05d), skipped", input_name, index)
        return done
    t0 = time.monotonic()
    hasher: list[HashingReader] = []
    records = file_records(input_url, input_name, cfg, hasher)
    with (
        Progress(input_name, unit="docs", every_s=cfg.log_every_s, log=log) as progress,
        ShardWriter(index, cfg, tok) as w,
    ):
        tally = tokenize_records(records, cfg, tok, w.add, progress, lambda: w.tokens)
        progress.update(0, tokens=w.finish())
    sha = hasher[0].hexdigest() if hasher else storage.sha256_url(input_url)
    return finish_shard(w, tally, input_name, identity, sha, time.monotonic() - t0)


def input_names(urls: list[str]) -> list[str]:
    """Short stable names for inputs: the path relative to their common folder."""
    paths = [u.split("://", 1)[-1] for u in urls]
    if len(paths) == 1:
        return [posixpath.basename(paths[0])]
    common = posixpath.commonpath(paths) if all(p.startswith("/") for p in paths) else None
    if common is None:
        common = os.path.commonpath(paths)
    return [posixpath.relpath(p, common) for p in paths]


def build_manifest(
    cfg: PrepareConfig,
    tok: TokenizerInfo,
    infos: list[dict[str, Any]],
    dedup_summary: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The committed manifest (``docs/CONTRACTS.md``) from the per-shard markers and, with
    ``--dedup``, the deduplication's summary (``distil.data.dedup.resolve``)."""
    infos = sorted(infos, key=lambda i: i["index"])
    counts = np.zeros(tok.vocab_size, dtype=np.int64)
    for info in infos:
        for tid, c in info["token_counts"].items():
            counts[int(tid)] += c
    rows = sum(i["rows"] for i in infos)
    tokens = sum(i["tokens"] for i in infos)
    by_reason: dict[str, int] = {}
    skipped: dict[str, int] = {}
    for info in infos:
        for r, c in info["dead_letter_by_reason"].items():
            by_reason[r] = by_reason.get(r, 0) + c
        for r, c in info["skipped_by_reason"].items():
            skipped[r] = skipped.get(r, 0) + c
    packing = packing_config(cfg)
    fingerprint = storage.fingerprint(
        {
            "inputs": [(i["index"], i["input"], i["input_sha256"]) for i in infos],
            "tokenizer": tok.fingerprint,
            "packing": packing,
        }
    )
    return {
        "kind": "prepared",
        "files": [
            {"name": i["name"], "rows": i["rows"], "tokens": i["tokens"], "input": i["input"]}
            for i in infos
        ],
        "rows": rows,
        "tokens": tokens,
        "padding_fraction": 0.0 if rows == 0 else 1.0 - tokens / (rows * cfg.seq_len),
        "seq_len": cfg.seq_len,
        "vocab_size": tok.vocab_size,
        "id_dtype": str(shards.id_type(tok.vocab_size)),
        "special_ids": tok.special_ids,
        "token_counts": counts.tolist(),
        "tokenizer": {
            "path": tok.path,
            "fingerprint": tok.fingerprint,
            "identity": tok.identity,
            "family": tok.family,
        },
        "config": packing,
        "fingerprint": fingerprint,
        "records": {
            "in": sum(i["records"] for i in infos),
            "documents": sum(i["documents"] for i in infos),
            "pieces": sum(i["pieces"] for i in infos),
            "dead_letter": sum(i["dead_letter"] for i in infos),
            "skipped": sum(i["skipped"] for i in infos),
            "skipped_by_reason": dict(sorted(skipped.items())),
        },
        "inputs": [
            {"index": i["index"], "name": i["input"], "sha256": i["input_sha256"]} for i in infos
        ],
        "dead_letter": {
            "count": sum(i["dead_letter"] for i in infos),
            "by_reason": dict(sorted(by_reason.items())),
            "files": [i["dead_letter_file"] for i in infos if i["dead_letter_file"]],
        },
        "dedup": dedup.manifest_entry(cfg.dedup_threshold, dedup_summary)
        if cfg.dedup
        else {"enabled": False},
    }


def plan_inputs(cfg: PrepareConfig) -> list[tuple[int, str, str]]:
    """(index, url, name) per input shard, in the order that fixes shard indices and seq_ids."""
    from distil.data.readers import list_inputs

    urls = list_inputs(cfg.input, cfg.format)
    return [(i, u, n) for i, (u, n) in enumerate(zip(urls, input_names(urls), strict=True))]
