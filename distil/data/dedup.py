"""Stage 1 deduplication: exact and near-duplicate documents, found before packing.

Every document gets, while its unit is read and tokenized, two fingerprints (``Signer``):

* an **exact hash**: 64-bit BLAKE2b of its normalised text (Unicode NFKC, case folded,
  whitespace runs collapsed to one space — a re-wrapped copy normalises to the same text);
* a **MinHash signature**: ``NUM_PERM`` = 14 bands × 8 rows of 32-bit minima over its word
  5-gram shingles (datatrove's defaults). Shingles are hashed vectorised over a batch of
  documents (a polynomial hash of each shingle's bytes from prefix sums, then a splitmix64
  finaliser); permutation ``k`` is multiplication by an odd 64-bit constant, and since taking the
  high 32 bits is monotonic the minimum is taken on the 64-bit products and shifted once.

A unit's fingerprints go to a signature file (``_dedup/sig/…parquet``: local document ordinal,
exact hash, one column per band key, the signature, the reader's offset and id). Then, for each
of the 14 bands and the exact hash (``band_edges``, one task each), documents with equal keys are
candidates; a candidate joins its bucket's lowest id only if their signatures agree on at least
``threshold`` of the rows (estimated Jaccard; exact-hash buckets need the whole signature to
agree, so a 64-bit collision never removes a document). ``resolve`` clusters the edges
(connected components, every cluster's root its lowest document id) and keeps the root: the
others are removed, as ``exact`` when a lower document has the same exact hash, else ``near``.

A document id is ``(input index << 32) | ordinal`` — the input's place in the sorted input list
and the document's place in that input — so it never depends on the worker count or range size.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from distil import storage
from distil.data import shards
from distil.data.readers import Document, Record
from distil.data.tokenize_pack import release_arrow_memory

log = logging.getLogger("distil.prepare")

NGRAM = 5
BANDS = 14
ROWS = 8
NUM_PERM = BANDS * ROWS
SEED = 1
# A new hash rule (normalisation, shingling, permutations) must not reuse old signatures.
VERSION = 1

_U64 = np.uint64
_MASK = (1 << 64) - 1
_BASE = 0x100000001B3  # odd, so it has an inverse mod 2**64
_BASE_INV = pow(_BASE, -1, 1 << 64)
# Shingle rows per matrix block: NUM_PERM * 2048 * 8 bytes = 1.8 MB, cache-sized.
_BLOCK = 2048
# The band number of the exact hash (bands 0..BANDS-1 are MinHash bands).
EXACT = BANDS
SIG_DIR = "_dedup/sig"
EDGE_DIR = "_dedup/edges"
# Audit list of the removed documents, committed next to the shards. The "_" keeps folder-level
# readers (pyarrow.dataset, Spark) that skip "_" files from taking it for a shard.
REMOVED_FILE = "_dedup_removed.parquet"
# Rows per signature-file row group: a document's row is found from its ordinal alone.
SIG_GROUP_ROWS = 4096
AUDIT_GROUP_ROWS = 65536
# Characters of normalised text hashed in one vectorised pass.
BATCH_CHARS = 1 << 20
BATCH_DOCS = 1024


def settings(threshold: float) -> dict[str, Any]:
    """What decides which documents are removed: recorded in the manifest and fingerprint."""
    return {
        "normalize": "nfkc-casefold-whitespace",
        "exact_hash": "blake2b-64",
        "shingle_words": NGRAM,
        "bands": BANDS,
        "rows": ROWS,
        "threshold": threshold,
        "seed": SEED,
        "version": VERSION,
    }


def normalize(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def _permutations(seed: int = SEED) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 1 << 63, size=NUM_PERM, dtype=np.uint64) * _U64(2) + _U64(1)


_PERMS = _permutations()


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: every input bit reaches every output bit."""
    z = z ^ (z >> _U64(30))
    z = z * _U64(0xBF58476D1CE4E5B9)
    z = z ^ (z >> _U64(27))
    z = z * _U64(0x94D049BB133111EB)
    return z ^ (z >> _U64(31))


class _Powers:
    """``BASE**i`` and ``BASE**-i`` mod 2**64 for i < n, grown on demand (one per process)."""

    def __init__(self) -> None:
        self.fwd = np.ones(1, np.uint64)
        self.inv = np.ones(1, np.uint64)

    def get(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        if len(self.fwd) < n:
            m = max(n, 2 * len(self.fwd))
            self.fwd = np.cumprod(np.full(m, _BASE, np.uint64))  # wraps mod 2**64, as meant
            self.inv = np.cumprod(np.full(m, _BASE_INV, np.uint64))
            self.fwd = np.concatenate([np.ones(1, np.uint64), self.fwd[:-1]])
            self.inv = np.concatenate([np.ones(1, np.uint64), self.inv[:-1]])
        return self.fwd[:n], self.inv[:n]


_POWERS = _Powers()


def span_hashes(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Mixed 64-bit hashes of ``buf[starts[i]:ends[i]]`` (bytes) for all ``i`` at once.

    ``C[j] = sum_{t<j} buf[t] * BASE**t`` (wrapping), so a span's polynomial hash is
    ``(C[end] - C[start]) * BASE**-start``: the same value wherever the span sits in ``buf``.
    """
    fwd, inv = _POWERS.get(len(buf) + 1)
    prefix = np.zeros(len(buf) + 1, np.uint64)
    np.cumsum(buf.astype(np.uint64) * fwd[: len(buf)], out=prefix[1:])
    return _mix((prefix[ends] - prefix[starts]) * inv[starts])


def minhash(shingles: np.ndarray, owner: np.ndarray, n_docs: int) -> np.ndarray:
    """``[n_docs, NUM_PERM]`` uint32 minima of the shingle hashes under each permutation;
    ``owner`` (non-decreasing) says whose each shingle is. A document without shingles keeps
    all-ones rows."""
    out = np.full((n_docs, NUM_PERM), np.iinfo(np.uint64).max, np.uint64)
    for a in range(0, len(shingles), _BLOCK):
        x, who = shingles[a : a + _BLOCK], owner[a : a + _BLOCK]
        products = x[:, None] * _PERMS[None, :]
        cut = np.flatnonzero(np.diff(who)) + 1
        starts = np.concatenate([[0], cut])
        docs = who[starts]
        out[docs] = np.minimum(out[docs], np.minimum.reduceat(products, starts, axis=0))
    return (out >> _U64(32)).astype(np.uint32)


def band_keys(sig: np.ndarray) -> np.ndarray:
    """``[n, BANDS]`` uint64 bucket keys: each band's ``ROWS`` values hashed together."""
    rows = sig.astype(np.uint64).reshape(len(sig), BANDS, ROWS)
    acc = np.zeros((len(sig), BANDS), np.uint64)
    for r in range(ROWS):
        acc = _mix(acc ^ rows[:, :, r])
    return acc


@dataclass
class _Open:
    """A document still being read (its last piece may continue in the next batch)."""

    ordinal: int
    offset: int
    doc_id: str
    exact: Any  # hashlib.blake2b
    has_text: bool = False
    carry: str = ""  # its last NGRAM - 1 normalised words, for shingles across a batch edge
    words: int = 0
    sig: np.ndarray | None = None
    pieces: list[str] = field(default_factory=list)


@dataclass
class Signatures:
    """Fingerprints of finished documents, in document order."""

    ordinal: np.ndarray  # int64
    offset: np.ndarray  # int64
    doc_id: list[str]
    exact: np.ndarray  # uint64
    sig: np.ndarray  # [n, NUM_PERM] uint32

    def __len__(self) -> int:
        return len(self.ordinal)


class Signer:
    """Fingerprints documents as they stream past (``observe``), handing each batch of finished
    ones to ``sink`` (default: kept for ``take``). Whole pieces are buffered up to
    ``BATCH_CHARS``, then hashed in one pass."""

    def __init__(self, sink: Callable[[Signatures], None] | None = None) -> None:
        self._docs: list[_Open] = []  # the batch: finished documents then maybe an open one
        self._chars = 0
        self._done: list[Signatures] = []
        self._sink = sink or self._done.append
        self.documents = 0

    def observe(self, records: Iterator[Record]) -> Iterator[Record]:
        for record in records:
            if isinstance(record, Document):
                self.add(record)
            yield record
        self.finish()

    def add(self, doc: Document) -> None:
        text = normalize(doc.text)
        if not (doc.continues and self._docs):
            if len(self._docs) >= BATCH_DOCS:
                self._flush(last_open=False)
            blake = hashlib.blake2b(digest_size=8)
            self._docs.append(_Open(self.documents, doc.offset, doc.doc_id, blake))
            self.documents += 1
        cur = self._docs[-1]
        if text:
            # the hash of the pieces joined by one space: the whole document's normal form
            cur.exact.update(b" " + text.encode() if cur.has_text else text.encode())
            cur.has_text = True
            cur.pieces.append(text)
            self._chars += len(text) + 1
        if self._chars >= BATCH_CHARS:
            self._flush(last_open=True)

    def finish(self) -> None:
        if self._docs:
            self._flush(last_open=False)

    def take(self) -> Signatures | None:
        if not self._done:
            return None
        parts, self._done = self._done, []
        return Signatures(
            np.concatenate([p.ordinal for p in parts]),
            np.concatenate([p.offset for p in parts]),
            [d for p in parts for d in p.doc_id],
            np.concatenate([p.exact for p in parts]),
            np.concatenate([p.sig for p in parts]),
        )

    def _flush(self, last_open: bool) -> None:
        docs = self._docs
        texts, owners, word_counts = [], [], []
        for i, d in enumerate(docs):
            parts = ([d.carry] if d.carry else []) + d.pieces
            for p in parts:
                texts.append(p)
                owners.append(i)
                word_counts.append(p.count(" ") + 1)
        buf = np.frombuffer(" ".join(texts).encode(), np.uint8)
        spaces = np.flatnonzero(buf == 32)
        starts = np.concatenate([[0], spaces + 1]).astype(np.int64)
        ends = np.concatenate([spaces, [len(buf)]]).astype(np.int64)
        word_owner = np.repeat(np.asarray(owners, np.int64), word_counts)
        if len(word_owner) != len(starts):  # no text at all in this batch
            starts = ends = word_owner = np.zeros(0, np.int64)
        n = len(docs)
        # words each document has in this batch (its carry included) and before it
        in_batch = np.bincount(word_owner, minlength=n)
        carried = np.array([len(d.carry.split()) if d.carry else 0 for d in docs], np.int64)
        before = np.array([d.words for d in docs], np.int64) - carried
        total = before + in_batch
        last = n - 1
        # full 5-gram shingles: a word and the NGRAM-1 after it belong to one document
        k = NGRAM - 1
        full = np.zeros(0, np.int64)
        if len(word_owner) > k:
            full = np.flatnonzero(word_owner[:-k] == word_owner[k:])
        s_start, s_end, s_owner = starts[full], ends[full + k], word_owner[full]
        # a finished document shorter than NGRAM words: one shingle of all its words
        closing = np.ones(n, bool)
        if last_open:
            closing[last] = False
        short = np.flatnonzero(closing & (total < NGRAM) & (in_batch > 0))
        if len(short):
            first = np.searchsorted(word_owner, short, side="left")
            final = np.searchsorted(word_owner, short, side="right") - 1
            s_start = np.concatenate([s_start, starts[first]])
            s_end = np.concatenate([s_end, ends[final]])
            s_owner = np.concatenate([s_owner, short])
            order = np.argsort(s_owner, kind="stable")
            s_start, s_end, s_owner = s_start[order], s_end[order], s_owner[order]
        hashes = span_hashes(buf, s_start, s_end)
        sig = minhash(hashes, s_owner, n)
        for i, d in enumerate(docs):
            if d.sig is not None:
                sig[i] = np.minimum(sig[i], d.sig)
        done = n - 1 if last_open else n
        if done:
            self._sink(
                Signatures(
                    np.array([d.ordinal for d in docs[:done]], np.int64),
                    np.array([d.offset for d in docs[:done]], np.int64),
                    [d.doc_id for d in docs[:done]],
                    np.array(
                        [int.from_bytes(d.exact.digest(), "little") for d in docs[:done]],
                        np.uint64,
                    ),
                    sig[:done],
                )
            )
        self._docs, self._chars = [], 0
        if last_open:
            d = docs[last]
            text = " ".join(([d.carry] if d.carry else []) + d.pieces)
            tail = text.rsplit(" ", k)[-k:] if text else []
            d.carry, d.words, d.sig, d.pieces = " ".join(tail), int(total[last]), sig[last], []
            if d.carry:
                self._chars = len(d.carry) + 1
            self._docs = [d]


def signature_schema() -> pa.Schema:
    return pa.schema(
        [
            ("doc", pa.int64()),
            ("offset", pa.int64()),
            ("doc_id", pa.string()),
            ("exact", pa.uint64()),
            *[(f"band{b:02d}", pa.uint64()) for b in range(BANDS)],
            ("sig", pa.list_(pa.uint32(), NUM_PERM)),
        ]
    )


def signature_table(s: Signatures) -> pa.Table:
    keys = band_keys(s.sig)
    return pa.Table.from_arrays(
        [
            pa.array(s.ordinal, pa.int64()),
            pa.array(s.offset, pa.int64()),
            pa.array(s.doc_id, pa.string()),
            pa.array(s.exact, pa.uint64()),
            *[pa.array(keys[:, b], pa.uint64()) for b in range(BANDS)],
            pa.FixedSizeListArray.from_arrays(pa.array(s.sig.reshape(-1), pa.uint32()), NUM_PERM),
        ],
        schema=signature_schema(),
    )


class SignatureWriter:
    """A unit's signature file, written through staging in row groups of ``SIG_GROUP_ROWS``."""

    def __init__(self, output: str, name: str):
        self.output, self.name = output, name
        self._pending: list[pa.Table] = []
        self._rows = 0
        self.documents = 0
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> SignatureWriter:
        f = self._stack.enter_context(storage.staged_file(self.output, self.name))
        self._writer = self._stack.enter_context(
            pq.ParquetWriter(f, signature_schema(), compression="zstd")
        )
        return self

    def __exit__(self, *exc: Any) -> None:
        if exc[0] is None:
            self._write(final=True)
        self._stack.__exit__(*exc)

    def add(self, s: Signatures) -> None:
        if s.ordinal.size and s.ordinal[0] != self.documents:
            raise RuntimeError(f"{self.name}: signatures out of order at {s.ordinal[0]}")
        self.documents += len(s)
        self._pending.append(signature_table(s))
        self._rows += len(s)
        self._write(final=False)

    def _write(self, final: bool) -> None:
        if not self._pending or (self._rows < SIG_GROUP_ROWS and not final):
            return
        table = pa.concat_tables(self._pending)
        cut = len(table) if final else len(table) // SIG_GROUP_ROWS * SIG_GROUP_ROWS
        if cut:
            self._writer.write_table(table.slice(0, cut), row_group_size=SIG_GROUP_ROWS)
        rest = table.slice(cut)
        self._pending, self._rows = ([rest] if len(rest) else []), len(rest)


def sig_name(index: int, k: int) -> str:
    return f"{SIG_DIR}/shard-{index:05d}-range-{k:05d}.parquet"


def band_name(band: int) -> str:
    return "exact" if band == EXACT else f"band-{band:02d}"


def doc_id(index: int, ordinal: int | np.ndarray) -> Any:
    """The stable document id: input index in the high 32 bits, ordinal in that input low."""
    return (np.int64(index) << np.int64(32)) | ordinal


# ------------------------------------------------------------------------ buckets and clusters


def _read(url: str, columns: list[str], row_groups: list[int] | None = None) -> pa.Table:
    """Columns of one signature file, on this thread. A band task reads every unit's file:
    through Arrow's dataset reader and thread pools its RSS grew by ~2 MB a file read (with
    the corpus, measured), so this reads plainly and hands the freed memory back."""
    fs, path = storage.arrow_filesystem(url)
    with fs.open_input_file(path) as f:
        pf = pq.ParquetFile(f)
        if row_groups is None:
            t = pf.read(columns=columns, use_threads=False)
        else:
            t = pf.read_row_groups(row_groups, columns=columns, use_threads=False)
    release_arrow_memory()
    return t


def _read_column(url: str, column: str) -> tuple[np.ndarray, np.ndarray]:
    t = _read(url, ["doc", column])
    return t.column("doc").to_numpy(), t.column(column).to_numpy()


def _signatures_of(ids: np.ndarray, sources: list[dict[str, Any]]) -> np.ndarray:
    """``[len(ids), NUM_PERM]`` signatures of the documents ``ids`` (sorted or not), reading only
    the row groups that hold them."""
    out = np.zeros((len(ids), NUM_PERM), np.uint32)
    bases = np.array([s["base"] for s in sources], np.int64)
    which = np.searchsorted(bases, ids, side="right") - 1
    for src in np.unique(which):
        pick = np.flatnonzero(which == src)
        rows = ids[pick] - bases[src]
        groups = np.unique(rows // SIG_GROUP_ROWS)
        t = _read(sources[src]["url"], ["sig"], groups.tolist())
        sig = t.column("sig").combine_chunks().flatten().to_numpy().reshape(-1, NUM_PERM)
        # row r of the file is at position (r's group's place in ``groups``) * G + r % G
        at = np.searchsorted(groups, rows // SIG_GROUP_ROWS) * SIG_GROUP_ROWS
        out[pick] = sig[at + rows % SIG_GROUP_ROWS]
    return out


def band_edges(
    band: int, sources: list[dict[str, Any]], threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """Edges ``(lower id, higher id)`` between documents that share band ``band``'s key (or the
    exact hash for ``EXACT``) and whose signatures agree on at least ``threshold`` of the rows
    (all of them for exact). ``sources``: the signature files, ``{"base", "docs", "url"}`` in
    document-id order, ``base`` the id of each file's first document."""
    column = "exact" if band == EXACT else f"band{band:02d}"
    need = 1.0 if band == EXACT else threshold
    ids, keys = [], []
    for s in sources:
        doc, key = _read_column(s["url"], column)
        ids.append(doc + np.int64(s["base"]))
        keys.append(key)
    empty = np.zeros(0, np.int64)
    if not ids:
        return empty, empty
    id_all, key_all = np.concatenate(ids), np.concatenate(keys)
    order = np.lexsort((id_all, key_all))
    id_all, key_all = id_all[order], key_all[order]
    same = key_all[1:] == key_all[:-1]
    member = np.zeros(len(id_all), bool)
    member[1:] |= same
    member[:-1] |= same
    cand, cand_key = id_all[member], key_all[member]
    if not len(cand):
        return empty, empty
    sig = _signatures_of(cand, sources)
    starts = np.flatnonzero(np.concatenate([[True], cand_key[1:] != cand_key[:-1]]))
    run = np.repeat(np.arange(len(starts)), np.diff(np.append(starts, len(cand))))
    leader = starts[run]
    agree = (sig == sig[leader]).mean(axis=1) >= need
    follower = np.arange(len(cand)) != leader
    a, b = [cand[leader[follower & agree]]], [cand[follower & agree]]
    # members that disagree with their bucket's lowest id: each joins the lowest of the bucket's
    # other leaders it agrees with, or becomes a leader itself
    for r in np.unique(run[follower & ~agree]):
        lo = starts[r]
        hi = starts[r + 1] if r + 1 < len(starts) else len(cand)
        leaders = [lo]
        for m in range(lo + 1, hi):
            if agree[m]:
                continue
            ok = (sig[leaders] == sig[m]).mean(axis=1) >= need
            if ok.any():
                a.append(cand[[leaders[int(np.argmax(ok))]]])
                b.append(cand[[m]])
            else:
                leaders.append(m)
    return np.concatenate(a), np.concatenate(b)


def components(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Union-find over the edges ``a[i] - b[i]``: ``(nodes, root)``, each node's cluster root
    being the cluster's lowest id (roots hooked under the lower root, then paths halved, until
    nothing moves; vectorised)."""
    nodes = np.unique(np.concatenate([a, b]))
    ia, ib = np.searchsorted(nodes, a), np.searchsorted(nodes, b)
    parent = np.arange(len(nodes))
    while True:
        ra, rb = parent[ia], parent[ib]
        low = np.minimum(ra, rb)
        new = parent.copy()
        np.minimum.at(new, ra, low)
        np.minimum.at(new, rb, low)
        while True:  # point every node at its root
            jumped = new[new]
            if np.array_equal(jumped, new):
                break
            new = jumped
        if np.array_equal(new, parent):
            return nodes, nodes[parent]
        parent = new


def read_edges(output: str, band: int) -> tuple[np.ndarray, np.ndarray]:
    t = shards.read_table(storage.join(output, _edge_name(band)))
    return t.column("a").to_numpy(), t.column("b").to_numpy()


def _edge_name(band: int) -> str:
    return f"{EDGE_DIR}/{band_name(band)}.parquet"


def run_band(
    output: str, band: int, sources: list[dict[str, Any]], key: str, threshold: float
) -> dict[str, Any]:
    """One band's bucket grouping (a unit of work with its own marker)."""
    unit = f"dedup-{band_name(band)}"
    done = storage.read_marker(output, unit)
    if done and done.get("key") == key:
        return {**done, "reused": True}
    t0 = time.monotonic()
    a, b = band_edges(band, sources, threshold)
    with storage.staged_file(output, _edge_name(band)) as f:
        pq.write_table(pa.table({"a": pa.array(a, pa.int64()), "b": pa.array(b, pa.int64())}), f)
    info = {"key": key, "band": band, "edges": len(a), "seconds": round(time.monotonic() - t0, 3)}
    storage.mark_done(output, unit, info)
    return {**info, "reused": False}


def resolve(
    output: str,
    sources: list[dict[str, Any]],
    names: dict[int, str],
    key: str,
) -> dict[str, Any]:
    """Cluster the bands' edges and write the audit list of removed documents; returns (and
    records as the ``dedup`` marker) the counts. ``names``: input index -> input name."""
    done = storage.read_marker(output, "dedup")
    if done and done.get("key") == key:
        return {**done, "reused": True}
    t0 = time.monotonic()
    near = [read_edges(output, band) for band in range(BANDS)]
    exact_a, exact_b = read_edges(output, EXACT)
    a = np.concatenate([exact_a, *(x for x, _ in near)])
    b = np.concatenate([exact_b, *(y for _, y in near)])
    nodes, root = components(a, b)
    removed = root != nodes
    ids, kept = nodes[removed], root[removed]
    # exact: a lower document has the same normalised text (joined by exact edges alone)
    ex_nodes, ex_root = components(exact_a, exact_b)
    ex_pos = np.searchsorted(ex_nodes, ids)
    ex_pos = np.minimum(ex_pos, max(len(ex_nodes) - 1, 0))
    is_exact = np.zeros(len(ids), bool)
    if len(ex_nodes):
        is_exact = (ex_nodes[ex_pos] == ids) & (ex_root[ex_pos] != ids)
    index = ids >> 32
    ordinal = ids & 0xFFFFFFFF
    offsets, source_ids = _audit_fields(ids, sources)
    table = pa.table(
        {
            "doc": pa.array(ids, pa.int64()),
            "input_index": pa.array(index, pa.int32()),
            "input": pa.array([names[int(i)] for i in index], pa.string()),
            "ordinal": pa.array(ordinal, pa.int64()),
            "offset": pa.array(offsets, pa.int64()),
            "doc_id": pa.array(source_ids, pa.string()),
            "reason": pa.array(np.where(is_exact, "exact", "near").tolist(), pa.string()),
            "kept": pa.array(kept, pa.int64()),
            "kept_input": pa.array([names[int(i)] for i in kept >> 32], pa.string()),
            "kept_ordinal": pa.array(kept & 0xFFFFFFFF, pa.int64()),
        }
    )
    with storage.staged_file(output, REMOVED_FILE) as f:
        pq.write_table(table, f, compression="zstd", row_group_size=AUDIT_GROUP_ROWS)
    per_input = np.bincount(index, minlength=max(names) + 1 if names else 0) if len(ids) else []
    info = {
        "key": key,
        "documents": int(sum(s["docs"] for s in sources)),
        "exact_removed": int(is_exact.sum()),
        "near_removed": int((~is_exact).sum()),
        "removed_file": REMOVED_FILE,
        "removed_by_input": {str(i): int(n) for i, n in enumerate(per_input) if n},
        "seconds": round(time.monotonic() - t0, 3),
    }
    storage.mark_done(output, "dedup", info)
    log.info(
        "dedup: %d documents, %d exact and %d near duplicates removed (%.1fs)",
        info["documents"],
        info["exact_removed"],
        info["near_removed"],
        info["seconds"],
    )
    return {**info, "reused": False}


def _audit_fields(ids: np.ndarray, sources: list[dict[str, Any]]) -> tuple[np.ndarray, list[str]]:
    """The reader's offset and document id of each of ``ids`` (sorted), from the signatures."""
    offsets = np.zeros(len(ids), np.int64)
    out: list[str] = [""] * len(ids)
    bases = np.array([s["base"] for s in sources], np.int64)
    which = np.searchsorted(bases, ids, side="right") - 1
    for src in np.unique(which):
        pick = np.flatnonzero(which == src)
        rows = ids[pick] - bases[src]
        t = _read(sources[src]["url"], ["offset", "doc_id"]).take(pa.array(rows))
        offsets[pick] = t.column("offset").to_numpy()
        for j, v in zip(pick, t.column("doc_id").to_pylist(), strict=True):
            out[j] = v
    return offsets, out


def removed_ordinals(output: str, index: int) -> np.ndarray:
    """Sorted ordinals of input ``index``'s removed documents (from the audit list)."""
    fs, path = storage.arrow_filesystem(storage.join(output, REMOVED_FILE))
    # the list is in id order, so row-group statistics skip the other inputs' rows
    t = pq.read_table(
        path, filesystem=fs, columns=["ordinal"], filters=[("input_index", "==", index)]
    )
    return np.sort(t.column("ordinal").to_numpy())


def manifest_entry(threshold: float, summary: dict[str, Any] | None) -> dict[str, Any]:
    summary = summary or {}
    documents = summary.get("documents", 0)
    exact, near = summary.get("exact_removed", 0), summary.get("near_removed", 0)
    return {
        "enabled": True,
        "settings": settings(threshold),
        "documents_in": documents,
        "exact_removed": exact,
        "near_removed": near,
        "documents_kept": documents - exact - near,
        "removed_file": summary.get("removed_file", REMOVED_FILE),
    }


def cleanup(output: str, enabled: bool) -> None:
    """After the commit: signatures, edges and the bands' markers are no longer needed. A
    deduplicated output keeps its ``dedup`` marker (a rerun on the same inputs reuses it) and
    its audit list; one committed with ``--no-dedup`` drops both, left by an earlier run."""
    storage.remove(storage.join(output, SIG_DIR.split("/")[0]))
    for band in range(BANDS + 1):
        storage.remove(storage.marker_url(output, f"dedup-{band_name(band)}"))
    if not enabled:
        storage.remove(storage.join(output, REMOVED_FILE))
        storage.remove(storage.marker_url(output, "dedup"))
