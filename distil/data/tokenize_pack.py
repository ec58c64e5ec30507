"""Stage 1 building blocks shared by whole-file and byte-range units (engine-free).

``tokenize_records`` turns a unit's records into token pieces in document order and counts the
records (``Tally``); ``ShardWriter`` packs pieces into ``[CLS] … [SEP]`` rows and writes one
output shard. A whole file feeds the writer directly; a split wiki dump's ranges, and every unit of a
deduplicated run, keep their pieces as parts (``PartWriter``, read back by ``iter_part``) that
one ``ShardWriter`` packs in order, so all give the same bytes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from distil import storage
from distil.data import shards
from distil.data.config import PrepareConfig
from distil.data.pack import SequencePacker
from distil.data.readers import BadInputError, DeadLetter, Document, Record, Skipped
from distil.data.tokenizer import TokenizerInfo, get_tokenizer
from distil.progress import Progress

# Text handed to one encode_batch call: big enough to amortise the call, small enough to bound
# memory whatever the document sizes.
ENCODE_BATCH_DOCS = 512
ENCODE_BATCH_CHARS = 2_000_000
# A part's row group: pieces held before they are written (bounded by tokens too: a book's
# paragraphs are few but long).
PART_GROUP_PIECES = 8192
PART_GROUP_TOKENS = 1 << 20


class Tally:
    """Record accounting of one unit: ``records = documents' pieces + dead_letter + skipped``."""

    def __init__(self) -> None:
        self.stats = {"records": 0, "documents": 0, "pieces": 0, "dead_letter": 0, "skipped": 0}
        self.by_reason: dict[str, int] = {}
        self.skipped_by_reason: dict[str, int] = {}
        self.dead: list[dict[str, Any]] = []

    def merge(self, other: dict[str, Any], offset_shift: int) -> None:
        """Add a range's tally (``to_dict``); its dead letters' offsets move by ``offset_shift``."""
        for k in self.stats:
            self.stats[k] += other["stats"][k]
        for mine, theirs in (
            (self.by_reason, other["by_reason"]),
            (self.skipped_by_reason, other["skipped_by_reason"]),
        ):
            for r, c in theirs.items():
                mine[r] = mine.get(r, 0) + c
        self.dead += [{**d, "offset": d["offset"] + offset_shift} for d in other["dead"]]

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


def tokenize_records(
    records: Iterator[Record],
    cfg: PrepareConfig,
    tok: TokenizerInfo,
    add: Callable[[list[int], bool], None],
    progress: Progress,
    tokens_so_far: Callable[[], int],
) -> Tally:
    """Tokenize a unit's documents in batches, handing each piece's ids to ``add`` in order."""
    tokenizer = get_tokenizer(tok)
    tally = Tally()
    stats = tally.stats
    batch: list[Document] = []
    batch_chars = 0

    def encode(batch: list[Document]) -> None:
        encodings = tokenizer.encode_batch_fast([d.text for d in batch], add_special_tokens=False)
        before = tokens_so_far()
        for doc, enc in zip(batch, encodings, strict=True):
            add(enc.ids, not doc.continues)
        progress.update(sum(not d.continues for d in batch), tokens=tokens_so_far() - before)

    for record in records:
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
            tally.by_reason[record.reason] = tally.by_reason.get(record.reason, 0) + 1
            tally.dead.append(record.to_dict())
        elif isinstance(record, Skipped):
            stats["skipped"] += 1
            tally.skipped_by_reason[record.reason] = (
                tally.skipped_by_reason.get(record.reason, 0) + 1
            )
    if batch:
        encode(batch)
    return tally


class ShardWriter:
    """Packs token pieces into rows and writes the output shard row group by row group (same
    options as ``shards.write_table``, never the whole shard in memory, no timestamps)."""

    def __init__(self, index: int, cfg: PrepareConfig, tok: TokenizerInfo):
        self.index, self.cfg, self.tok = index, cfg, tok
        sp = tok.special_ids
        self.packer = SequencePacker(
            cfg.seq_len, sp["cls"], sp["sep"], sp["pad"], cfg.cross_document
        )
        self.counts = np.zeros(tok.vocab_size, dtype=np.int64)
        self.rows = self.tokens = 0
        self.name = shards.SHARD_PATTERN.format(index=index)
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> ShardWriter:
        f = self._stack.enter_context(storage.staged_file(self.cfg.output, self.name))
        self._writer = self._stack.enter_context(
            pq.ParquetWriter(
                f,
                shards.schema(self.tok.vocab_size),
                compression="zstd",
                use_dictionary=False,
                write_statistics=True,
                store_schema=True,
            )
        )
        return self

    def __exit__(self, *exc: Any) -> None:
        if exc[0] is None:
            self.finish()
        self._stack.__exit__(*exc)

    def finish(self) -> int:
        """Close the tail row and write what is pending; returns the tokens this wrote."""
        before = self.tokens
        self.packer.finish()
        self._flush(final=True)
        return self.tokens - before

    def add(self, ids: Any, new_document: bool) -> None:
        self.packer.add(ids, new_document)
        self._flush(final=False)

    def _flush(self, final: bool) -> None:
        pad, vocab = self.tok.special_ids["pad"], self.tok.vocab_size
        while self.packer.pending_rows() >= shards.ROW_GROUP_ROWS or (
            final and self.packer.pending_rows()
        ):
            ids, lengths = self.packer.take_rows(shards.ROW_GROUP_ROWS)
            seq_ids = np.array(
                [shards.make_seq_id(self.index, self.rows + i) for i in range(len(ids))],
                dtype=np.int64,
            )
            self.counts += np.bincount(ids[ids != pad], minlength=vocab)[:vocab]
            self._writer.write_table(
                shards.to_table(seq_ids, ids, lengths, vocab), row_group_size=shards.ROW_GROUP_ROWS
            )
            self.rows += len(ids)
            self.tokens += int(lengths.sum())


class PartWriter:
    """A unit's token pieces, in order, as a Parquet part (one row a piece: ``ids``,
    ``new_doc``), written row group by row group: a unit never holds its tokens whole."""

    def __init__(self, output: str, name: str, vocab_size: int):
        self.output, self.name = output, name
        self._type = shards.id_type(vocab_size)
        self._np = np.uint16 if self._type == pa.uint16() else np.int32
        self._ids: list[np.ndarray] = []
        self._new: list[bool] = []
        self._pending = 0
        self.tokens = 0
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> PartWriter:
        f = self._stack.enter_context(storage.staged_file(self.output, self.name))
        schema = pa.schema([("ids", pa.list_(self._type)), ("new_doc", pa.bool_())])
        self._writer = self._stack.enter_context(
            pq.ParquetWriter(f, schema, compression="zstd", use_dictionary=False)
        )
        return self

    def __exit__(self, *exc: Any) -> None:
        if exc[0] is None:
            self._flush()
        self._stack.__exit__(*exc)

    def add(self, ids: Any, new_document: bool) -> None:
        piece = np.asarray(ids, dtype=self._np)
        self._ids.append(piece)
        self._new.append(new_document)
        self._pending += len(piece)
        self.tokens += len(piece)
        if len(self._ids) >= PART_GROUP_PIECES or self._pending >= PART_GROUP_TOKENS:
            self._flush()

    def _flush(self) -> None:
        if not self._ids:
            return
        lengths = np.fromiter((len(a) for a in self._ids), np.int32, len(self._ids))
        offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int32)
        flat = pa.array(np.concatenate(self._ids), self._type)
        table = pa.table(
            {
                "ids": pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), flat),
                "new_doc": pa.array(self._new, pa.bool_()),
            }
        )
        self._writer.write_table(table, row_group_size=len(self._ids))
        self._ids, self._new, self._pending = [], [], 0


def iter_part(url: str) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """A part's row groups as ``(flat ids, piece lengths, new_doc)``."""
    fs, path = storage.arrow_filesystem(url)
    with fs.open_input_file(path) as f:
        pf = pq.ParquetFile(f)
        for i in range(pf.num_row_groups):
            t = pf.read_row_group(i, use_threads=False)
            ids = t.column("ids").combine_chunks()
            flat = ids.flatten().to_numpy(zero_copy_only=False)
            lengths = np.diff(ids.offsets.to_numpy())
            yield flat, lengths, t.column("new_doc").to_numpy()


def release_arrow_memory() -> None:
    """Hand Arrow's freed buffers back to the OS. Its allocator keeps them for reuse, and a
    worker that reads and writes one Parquet file after another grew by ~1 MB a file without it
    (measured on the dedup path: a task's RSS would follow the corpus size, not its unit's)."""
    pa.default_memory_pool().release_unused()
