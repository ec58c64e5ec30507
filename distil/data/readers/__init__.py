"""Streaming corpus readers: one input file in, documents and dead-letter records out.

Every reader is a generator over ``Document | DeadLetter | Skipped``, exactly one item per input
record (a JSONL line, a Parquet row, a book paragraph or over-long line, a wiki ``<page>``), so
row accounting is ``records = documents + dead_letter + skipped`` by construction. Nothing holds a
whole file: XML is parsed with ``iterparse`` (each page cleared after use), lines are read with a
byte limit, Parquet by row batch.

A long book is one document but streamed as paragraph pieces: ``Document.continues`` is True for
every piece after the first, so the packer treats the pieces as one run of text.

``offset`` is where the record starts: a byte offset in the (decompressed) stream for text and
JSONL, the row index for Parquet, the page ordinal for wiki dumps.

The readers live in one module per format family (``lines``: text and JSONL, ``parquet``,
``wiki``; wikitext to prose in ``wikitext``), with the record types in ``records`` and file handling (format detection, listing,
hashing, decompression) in ``files``; this package's ``read_records`` picks one per file, and
every public name stays importable from ``distil.data.readers``.
"""

from __future__ import annotations

from collections.abc import Iterator

from distil import storage
from distil.data.readers.files import (
    FORMATS,
    HashingReader,
    _decompressed,
    detect_format,
    list_inputs,
)
from distil.data.readers.lines import MAX_PIECE_CHARS, read_jsonl, read_text
from distil.data.readers.parquet import read_parquet
from distil.data.readers.records import BadInputError, DeadLetter, Document, Record, Skipped
from distil.data.readers.wiki import read_wiki
from distil.data.readers.wikitext import EXTRACTOR_VERSION, wikitext_to_text

__all__ = [
    "EXTRACTOR_VERSION",
    "FORMATS",
    "MAX_PIECE_CHARS",
    "BadInputError",
    "DeadLetter",
    "Document",
    "HashingReader",
    "Record",
    "Skipped",
    "detect_format",
    "list_inputs",
    "read_jsonl",
    "read_parquet",
    "read_records",
    "read_text",
    "read_wiki",
    "wikitext_to_text",
]


def read_records(
    url: str,
    source: str,
    fmt: str,
    *,
    text_column: str = "text",
    id_column: str | None = None,
    max_line_bytes: int = 4 * 1024 * 1024,
    hasher: list[HashingReader] | None = None,
) -> Iterator[Record]:
    """Records of one input file. ``fmt`` is a format name or "auto" (by extension).

    If ``hasher`` is a list, the ``HashingReader`` over the raw bytes is appended to it; once the
    generator is exhausted its ``hexdigest()`` is the file's sha256 (Parquet: hashed separately).
    """
    if fmt == "auto":
        fmt = detect_format(url) or ""
    if fmt not in FORMATS:
        raise ValueError(f"{url}: unknown input format (extension); pass --format {FORMATS}")
    if fmt == "parquet":
        yield from read_parquet(url, source, text_column, id_column)
        return
    fs, path = storage.get_fs(url)
    with fs.open(path, "rb") as raw_file:
        raw = HashingReader(raw_file)
        if hasher is not None:
            hasher.append(raw)
        f = _decompressed(raw, url)
        if fmt == "wiki":
            yield from read_wiki(f, source)
        elif fmt == "text":
            yield from read_text(f, source, max_line_bytes)
        else:
            yield from read_jsonl(f, source, text_column, id_column, max_line_bytes)
        raw.drain()
