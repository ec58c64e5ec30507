"""Stage 1 steps, engine-free: one input shard -> one packed Parquet shard + completion marker.

``prepare_shard`` is the unit of work the Ray job maps over (one call per input file). It
streams records from the reader, tokenizes them in batches, packs rows, writes the output shard
through ``storage.staged_file`` row group by row group and, last, writes the shard's marker.
``build_manifest`` turns the markers into the committed manifest. Output bytes depend only on
the input file, its index in the sorted input list and the config — never on the worker count.
The tokenizer (``TokenizerInfo``, ``load_tokenizer_info``) lives in ``distil.data.tokenizer``.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import time
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from distil import storage
from distil.data import shards
from distil.data.config import PrepareConfig
from distil.data.pack import SequencePacker
from distil.data.readers import (
    BadInputError,
    DeadLetter,
    Document,
    HashingReader,
    Skipped,
    detect_format,
    read_records,
)
from distil.data.tokenizer import TokenizerInfo, get_tokenizer, load_tokenizer_info
from distil.progress import Progress

log = logging.getLogger("distil.prepare")

DEAD_LETTER_PATTERN = "dead_letter/shard-{index:05d}.jsonl"
# Text handed to one encode_batch call: big enough to amortise the call, small enough to bound
# memory whatever the document sizes.
ENCODE_BATCH_DOCS = 512
ENCODE_BATCH_CHARS = 2_000_000


def packing_config(cfg: PrepareConfig) -> dict[str, Any]:
    """The config fields that change output bytes (and nothing else: not workers, not paths)."""
    return {
        "seq_len": cfg.seq_len,
        "cross_document": cfg.cross_document,
        "format": cfg.format,
        "text_column": cfg.text_column,
        "id_column": cfg.id_column,
        "max_line_bytes": cfg.max_line_bytes,
        "shard_pattern": shards.SHARD_PATTERN,
        "row_group_rows": shards.ROW_GROUP_ROWS,
    }


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


def prepare_shard(
    index: int, input_url: str, input_name: str, cfg: PrepareConfig, tok: TokenizerInfo
) -> dict[str, Any]:
    """Process one input shard; returns (and records as its marker) the shard's statistics.

    Skips the work if a marker for the same input, config and tokenizer already exists.
    """
    unit = f"shard-{index:05d}"
    key = shard_key(cfg, tok)
    identity = input_identity(input_url)
    done = storage.read_marker(cfg.output, unit)
    if done and done.get("key") == key and done.get("input_identity") == identity:
        log.info("%s: already done (marker %s), skipped", input_name, unit)
        done["reused"] = True
        return done

    tokenizer = get_tokenizer(tok)
    vocab = tok.vocab_size
    sp = tok.special_ids
    packer = SequencePacker(cfg.seq_len, sp["cls"], sp["sep"], sp["pad"], cfg.cross_document)
    counts = np.zeros(vocab, dtype=np.int64)
    stats = {"records": 0, "documents": 0, "pieces": 0, "dead_letter": 0, "skipped": 0}
    by_reason: dict[str, int] = {}
    skipped_by_reason: dict[str, int] = {}
    dead: list[dict[str, Any]] = []
    rows_written = tokens_written = 0
    t0 = time.monotonic()
    hasher: list[HashingReader] = []
    fmt = cfg.format if cfg.format != "auto" else (detect_format(input_url) or "auto")
    schema = shards.schema(vocab)
    name = shards.SHARD_PATTERN.format(index=index)

    with (
        Progress(input_name, unit="docs", every_s=cfg.log_every_s, log=log) as progress,
        storage.staged_file(cfg.output, name) as f,
        pq.ParquetWriter(
            f,
            schema,
            compression="zstd",
            use_dictionary=False,
            write_statistics=True,
            store_schema=True,
        ) as writer,
    ):
        # Same options as shards.write_table, but row group by row group, so a huge input shard
        # never has its whole output in memory. Deterministic: no timestamps in the file.

        def flush(final: bool) -> None:
            nonlocal rows_written, tokens_written
            while packer.pending_rows() >= shards.ROW_GROUP_ROWS or (
                final and packer.pending_rows()
            ):
                ids, lengths = packer.take_rows(shards.ROW_GROUP_ROWS)
                seq_ids = np.array(
                    [shards.make_seq_id(index, rows_written + i) for i in range(len(ids))],
                    dtype=np.int64,
                )
                nonpad = ids[ids != sp["pad"]]
                counts[:] += np.bincount(nonpad, minlength=vocab)[:vocab]
                writer.write_table(
                    shards.to_table(seq_ids, ids, lengths, vocab),
                    row_group_size=shards.ROW_GROUP_ROWS,
                )
                rows_written += len(ids)
                tokens_written += int(lengths.sum())

        batch: list[Document] = []
        batch_chars = 0

        def encode(batch: list[Document]) -> None:
            encodings = tokenizer.encode_batch_fast(
                [d.text for d in batch], add_special_tokens=False
            )
            for doc, enc in zip(batch, encodings, strict=True):
                packer.add(enc.ids, new_document=not doc.continues)
            before = tokens_written
            flush(final=False)
            docs = sum(not d.continues for d in batch)
            progress.update(docs, tokens=tokens_written - before)

        for record in read_records(
            input_url,
            input_name,
            fmt,
            text_column=cfg.text_column,
            id_column=cfg.id_column,
            max_line_bytes=cfg.max_line_bytes,
            hasher=hasher,
        ):
            stats["records"] += 1
            if isinstance(record, Document):
                stats["pieces"] += 1
                stats["documents"] += 0 if record.continues else 1
                batch.append(record)
                batch_chars += len(record.text)
                if len(batch) >= ENCODE_BATCH_DOCS or batch_chars >= ENCODE_BATCH_CHARS:
                    encode(batch)
                    batch, batch_chars = [], 0
            elif isinstance(record, DeadLetter):
                if cfg.strict:
                    raise BadInputError(
                        f"{record.source} at offset {record.offset}: {record.reason} "
                        f"({record.detail}) [--strict]"
                    )
                stats["dead_letter"] += 1
                by_reason[record.reason] = by_reason.get(record.reason, 0) + 1
                dead.append(record.to_dict())
            elif isinstance(record, Skipped):
                stats["skipped"] += 1
                skipped_by_reason[record.reason] = skipped_by_reason.get(record.reason, 0) + 1
        if batch:
            encode(batch)
        packer.finish()
        before = tokens_written
        flush(final=True)
        progress.update(0, tokens=tokens_written - before)

    dead_name = None
    if dead:
        dead_name = DEAD_LETTER_PATTERN.format(index=index)
        with storage.staged_file(cfg.output, dead_name) as f:
            for rec in dead:
                f.write((json.dumps(rec, sort_keys=True) + "\n").encode())

    sha = hasher[0].hexdigest() if hasher else storage.sha256_url(input_url)
    elapsed = time.monotonic() - t0
    nonzero = np.nonzero(counts)[0]
    info = {
        "key": key,
        "index": index,
        "name": name,
        "input": input_name,
        "input_identity": identity,
        "input_sha256": sha,
        "rows": rows_written,
        "tokens": tokens_written,
        **stats,
        "dead_letter_by_reason": by_reason,
        "skipped_by_reason": skipped_by_reason,
        "dead_letter_file": dead_name,
        "token_counts": {str(int(i)): int(counts[i]) for i in nonzero},
        "seconds": round(elapsed, 3),
    }
    log.info(
        "%s -> %s: %d docs, %d rows, %d tokens, %d dead letters in %.1fs (%.0f tokens/s)",
        input_name,
        name,
        stats["documents"],
        rows_written,
        tokens_written,
        stats["dead_letter"],
        elapsed,
        tokens_written / max(elapsed, 1e-9),
    )
    storage.mark_done(cfg.output, unit, info)
    return info


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
    cfg: PrepareConfig, tok: TokenizerInfo, infos: list[dict[str, Any]]
) -> dict[str, Any]:
    """The committed manifest (``docs/CONTRACTS.md``) from the per-shard markers."""
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
        "tokenizer": {"path": tok.path, "fingerprint": tok.fingerprint, "identity": tok.identity},
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
    }


def plan_inputs(cfg: PrepareConfig) -> list[tuple[int, str, str]]:
    """(index, url, name) per input shard, in the order that fixes shard indices and seq_ids."""
    from distil.data.readers import list_inputs

    urls = list_inputs(cfg.input, cfg.format)
    return [(i, u, n) for i, (u, n) in enumerate(zip(urls, input_names(urls), strict=True))]


def run_serial(cfg: PrepareConfig) -> dict[str, Any]:
    """The whole stage in this process, one shard after another (no Ray): for tests, benchmarks
    and small inputs. Same bytes as the Ray job. Returns the committed manifest."""
    tok = load_tokenizer_info(cfg.tokenizer)
    infos = [prepare_shard(i, url, name, cfg, tok) for i, url, name in plan_inputs(cfg)]
    manifest = build_manifest(cfg, tok, infos)
    storage.commit(cfg.output, manifest)
    return manifest
