"""Streaming corpus readers: one input file in, documents and dead-letter records out.

Every reader is a generator over ``Document | DeadLetter | Skipped``, exactly one item per input
record (a JSON line or array element, a CSV/TSV row, a Parquet/Arrow row, a book paragraph or
over-long line, a wiki ``<page>``), so row accounting is ``records = documents + dead_letter +
skipped`` by construction. Nothing holds a whole file: XML is parsed with ``iterparse`` (each
page cleared after use), lines are read with a byte limit, a JSON array element by element,
Parquet and Arrow by record batch.

A long book is one document but streamed as paragraph pieces: ``Document.continues`` is True for
every piece after the first, so the packer treats the pieces as one run of text.

``offset`` is where the record starts: a byte offset in the (decompressed) stream for text,
JSON and CSV/TSV, the row number for Parquet and Arrow, the page ordinal for wiki dumps.

The readers live in one module per format family (``lines``: text, JSON lines and JSON arrays;
``delimited``: CSV/TSV; ``parquet``: Parquet and Arrow; ``wiki``, with wikitext to prose in
``wikitext``), with the record types in ``records``, file handling (the table of formats,
listing, hashing) in ``files``, decompression in ``compression`` and the splitting of big files
into ranges in ``ranges`` (``wiki_ranges`` for bz2 dumps); this package's ``read_records``
picks one per file, and every public name stays importable from ``distil.data.readers``.

The other stages read through the same layer: ``review_files`` reads review files for
``distil finetune`` and ``distil score`` (``Review | DeadLetter``, with this package's format
table, listing, ranges, decompression and dead-letter record), and ``stream`` deals the row
groups of committed Parquet files (prepared shards, teacher caches) to training ranks by
``ReadPosition``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import IO, Any

from distil import storage
from distil.data.readers.compression import SUFFIXES as COMPRESSIONS
from distil.data.readers.compression import decompressed, open_stream
from distil.data.readers.delimited import DELIMITERS, csv_header, read_csv
from distil.data.readers.files import (
    FORMATS,
    HashingReader,
    InputListing,
    Refusal,
    UnreadableInputsError,
    detect_format,
    list_inputs,
)
from distil.data.readers.lines import (
    MAX_PIECE_CHARS,
    json_array_head,
    read_json_array,
    read_jsonl,
    read_text,
)
from distil.data.readers.parquet import read_arrow, read_parquet
from distil.data.readers.ranges import FileRange, Lines
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
    "FileRange",
    "HashingReader",
    "InputListing",
    "Record",
    "Refusal",
    "Skipped",
    "UnreadableInputsError",
    "detect_format",
    "is_json_array",
    "list_inputs",
    "read_arrow",
    "read_json_array",
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
    part: FileRange | None = None,
) -> Iterator[Record]:
    """Records of one input file. ``fmt`` is a format name or "auto" (by extension).

    If ``hasher`` is a list, the ``HashingReader`` over the raw bytes is appended to it; once the
    generator is exhausted its ``hexdigest()`` is the file's sha256 (Parquet, Arrow and ranges:
    not hashed). ``part``: read only that range of the file (``distil.data.readers.ranges``;
    JSON lines, CSV/TSV and Parquet), with the records and offsets reading it whole gives.
    """
    if fmt == "auto":
        fmt = detect_format(url) or ""
    if fmt not in FORMATS:
        raise ValueError(f"{url}: unknown input format (extension); pass --format {FORMATS}")
    columns = {"text_column": text_column, "id_column": id_column}
    if fmt == "parquet":
        groups = None if part is None else (part.start, part.end)
        first = 0 if part is None else part.first_row
        yield from read_parquet(url, source, **columns, row_groups=groups, first_row=first)
        return
    if fmt == "arrow":
        yield from read_arrow(url, source, **columns)
        return
    if part is not None and part != FileRange(url):
        yield from _read_range(part, source, fmt, columns, max_line_bytes)
        return
    fs, path = storage.get_fs(url)
    with fs.open(path, "rb") as raw_file:
        raw = HashingReader(raw_file)
        if hasher is not None:
            hasher.append(raw)
        f = decompressed(raw, url)
        if fmt == "wiki":
            yield from read_wiki(f, source)
        elif fmt == "text":
            yield from read_text(f, source, max_line_bytes)
        elif fmt in DELIMITERS:
            yield from read_csv(iter(Lines(f)), source, DELIMITERS[fmt], **columns,
                                max_record_bytes=max_line_bytes)  # fmt: skip
        else:
            array, f = _json_kind(f, url)
            if array:
                yield from read_json_array(f, source, **columns, max_record_bytes=max_line_bytes)
            else:
                yield from read_jsonl(f, source, **columns, max_line_bytes=max_line_bytes)
        raw.drain()


def _json_kind(f: IO[bytes], url: str) -> tuple[bool, IO[bytes]]:
    """Whether a JSON file holds one array (only a ``.json`` file may; ``.jsonl`` and
    ``.ndjson`` are JSON lines), and the stream to read it from."""
    if not is_json_name(url):
        return False, f
    return json_array_head(f)


def is_json_name(url: str) -> bool:
    """A ``.json`` file (compressed or not): one JSON array or one object a line."""
    lower = url.lower()
    return any(lower.endswith(".json" + c) for c in ("", *COMPRESSIONS))


def is_json_array(url: str) -> bool:
    """Whether ``url`` is a ``.json`` file holding one JSON array (reads its first bytes)."""
    if not is_json_name(url):
        return False
    with open_stream(url) as f:
        return json_array_head(f)[0]


def _read_range(
    part: FileRange, source: str, fmt: str, columns: dict[str, Any], max_line_bytes: int
) -> Iterator[Record]:
    """A byte range of an uncompressed JSON lines or CSV/TSV file (cut at record boundaries by
    ``ranges.plan_ranges``)."""
    fs, path = storage.get_fs(part.url)
    if fmt == "jsonl":
        with fs.open(path, "rb") as f:
            f.seek(part.start)
            yield from read_jsonl(f, source, **columns, max_line_bytes=max_line_bytes,
                                  start=part.start, end=part.end)  # fmt: skip
        return
    if fmt not in DELIMITERS:
        raise ValueError(f"{part.url}: {fmt} files are not read in ranges")
    # a range starting at byte 0 reads the header as its first record
    header = csv_header(part.url, DELIMITERS[fmt]) if part.start else None
    with fs.open(path, "rb") as f:
        f.seek(part.start)
        lines = iter(Lines(f, part.start, part.end))
        yield from read_csv(lines, source, DELIMITERS[fmt], **columns,
                            max_record_bytes=max_line_bytes, header=header,
                            start=part.start, first_range=part.first_row == 0)  # fmt: skip
