"""Task-level teacher logits on object storage, keyed by sha256 of the review text.

Written by ``distil finetune --write-teacher-cache URL`` from a fine-tuned teacher; read by
``distil finetune --teacher-cache URL`` (the KD term, DistilBERT's second distillation step) and
by ``distil score --teacher-cache URL`` (student–teacher agreement on the rows it covers: a
drift check on a fixed set of cached texts; the nightly run, which scores new texts, skips it).

Layout: ``URL/part-00000.parquet …`` with columns ``text_sha256`` (string, unique) and ``logits``
(list<float32>, one per class in ``id2label`` order), and ``URL/manifest.json``:
``{"kind": "sentiment_teacher_logits", "files", "rows", "id2label", "model", "model_fingerprint",
"fingerprint"}``, committed last.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from distil import storage
from distil.data.readers.review_files import text_sha256

KIND = "sentiment_teacher_logits"
ROWS_PER_FILE = 100_000


def write_teacher_cache(
    url: str,
    texts: list[str],
    logits: np.ndarray,
    id2label: dict[int, str],
    model: str = "",
    model_fingerprint: str = "",
) -> dict[str, Any]:
    """Cache ``logits[i]`` under ``sha256(texts[i])`` (duplicate texts stored once)."""
    return write_teacher_logits(
        url, [text_sha256(t) for t in texts], logits, id2label, model, model_fingerprint
    )


def write_teacher_logits(
    url: str,
    text_hashes: list[str],
    logits: np.ndarray,
    id2label: dict[int, str],
    model: str = "",
    model_fingerprint: str = "",
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Cache ``logits[i]`` under ``text_hashes[i]`` (the first of repeated keys kept); ``extra``
    goes into the manifest (what the logits were computed over)."""
    seen: dict[str, int] = {}
    for i, k in enumerate(text_hashes):
        seen.setdefault(k, i)
    keys = list(seen)
    rows = np.asarray([seen[k] for k in keys], dtype=np.int64)
    values = np.asarray(logits, dtype=np.float32)[rows] if len(rows) else np.zeros((0, 0))
    files = []
    for start in range(0, max(len(keys), 1), ROWS_PER_FILE):
        chunk = values[start : start + ROWS_PER_FILE]
        k = chunk.shape[1] if chunk.ndim == 2 else len(id2label)
        flat = pa.array(chunk.reshape(-1), pa.float32())
        offsets = pa.array(np.arange(0, (len(chunk) + 1) * k, k, dtype=np.int32))
        table = pa.table(
            {
                "text_sha256": pa.array(keys[start : start + ROWS_PER_FILE], pa.string()),
                "logits": pa.ListArray.from_arrays(offsets, flat),
            }
        )
        name = f"part-{len(files):05d}.parquet"
        with storage.staged_file(url, name) as f:
            pq.write_table(table, f, compression="zstd")
        files.append({"name": name, "rows": table.num_rows})
    manifest = {
        "kind": KIND,
        "files": files,
        "rows": len(keys),
        "id2label": {str(k): v for k, v in id2label.items()},
        "model": model,
        "model_fingerprint": model_fingerprint,
        "fingerprint": storage.fingerprint([model_fingerprint, keys[:1000], len(keys)]),
        **(extra or {}),
    }
    storage.commit(url, manifest)
    return manifest


def open_teacher_cache(url: str) -> dict[str, Any]:
    manifest = storage.read_manifest(url)
    if manifest.get("kind") != KIND:
        raise ValueError(f"{url} is not a teacher logits cache (kind={manifest.get('kind')})")
    return manifest


def iter_teacher_file(file_url: str) -> Iterator[tuple[str, np.ndarray]]:
    fs, path = storage.arrow_filesystem(file_url)
    table = pq.read_table(path, filesystem=fs)
    keys = table.column("text_sha256").to_pylist()
    col = table.column("logits").combine_chunks()
    k = len(col[0]) if len(col) else 0
    values = col.flatten().to_numpy(zero_copy_only=False).reshape(len(keys), k)
    yield from zip(keys, values, strict=True)


def read_teacher_cache(url: str) -> dict[str, np.ndarray]:
    """All cached logits as ``{text_sha256: logits}`` (fine for task-sized caches)."""
    open_teacher_cache(url)
    out: dict[str, np.ndarray] = {}
    for f in storage.committed_files(url):
        out.update(iter_teacher_file(f))
    return out


def check_labels(manifest: dict[str, Any], id2label: dict[int, str]) -> None:
    """Agreement and KD compare class *indices*: refuse a cache whose classes differ."""
    cached = {int(k): v for k, v in manifest["id2label"].items()}
    if cached != {int(k): v for k, v in id2label.items()}:
        raise ValueError(f"teacher cache classes {cached} differ from the model's {id2label}")


def teacher_targets(
    url: str, texts: list[str], id2label: dict[int, str]
) -> tuple[np.ndarray, np.ndarray]:
    """(``[n, classes]`` float32 teacher logits, ``[n]`` bool covered) for ``texts`` from the
    cache at ``url`` (rows the cache lacks are zeros, not covered)."""
    check_labels(open_teacher_cache(url), id2label)
    cache = read_teacher_cache(url)
    logits = np.zeros((len(texts), len(id2label)), np.float32)
    covered = np.zeros(len(texts), bool)
    for i, text in enumerate(texts):
        hit = cache.get(text_sha256(text))
        if hit is not None:
            logits[i], covered[i] = hit, True
    return logits, covered
