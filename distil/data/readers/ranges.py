"""One big record file as several ranges, each read by whichever worker gets it, with the same
records as reading the file whole: byte ranges cut at record boundaries for JSON lines and
CSV/TSV, runs of row groups for Parquet. One planner for every stage that splits files
(``distil prepare``, ``distil score``).

A compressed file is never split: a compressed stream has no byte offsets to cut at (a bz2
Wikipedia dump has its own splitter, ``distil.data.readers.wiki_ranges``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from distil import storage
from distil.data.readers.compression import compression_of, open_stream
from distil.data.readers.delimited import DELIMITERS, csv_records

# the formats ``plan_ranges`` cuts (anything else is one range)
SPLITTABLE = ("jsonl", "csv", "tsv", "parquet")
_SCAN_CHUNK = 1 << 20


@dataclass(frozen=True)
class FileRange:
    """A part of one input file a worker reads on its own: bytes ``[start, end)`` of a JSONL or
    CSV file, cut at record boundaries, or row groups ``[start, end)`` of a Parquet file.
    ``first_row`` is the number of the records before it (the row of its first record);
    ``end=None`` reads to the end."""

    url: str
    start: int = 0
    end: int | None = None
    first_row: int = 0


class Lines:
    """Lines (with their endings) of ``f`` from byte ``start`` until byte ``end``; ``pos`` is
    the byte offset after the last line handed out (the planner cuts there)."""

    def __init__(self, f: Any, start: int = 0, end: int | None = None):
        self.f, self.pos, self.end = f, start, end

    def __iter__(self) -> Iterator[bytes]:
        for line in self.f:
            if self.end is not None and self.pos >= self.end:
                return
            self.pos += len(line)
            yield line


@contextlib.contextmanager
def open_range(part: FileRange) -> Iterator[Any]:
    """The file (decompressed: ``distil.data.readers.compression``) positioned at the range's
    start. Only a whole file may be compressed (``plan_ranges`` never splits one)."""
    if not part.start:
        with open_stream(part.url) as f:
            yield f
        return
    fs, path = storage.get_fs(part.url)
    with fs.open(path, "rb") as f:
        f.seek(part.start)
        yield f


def plan_ranges(url: str, size: int, split_bytes: int, fmt: str) -> list[FileRange]:
    """``url`` (of format ``fmt``) as ranges of about ``split_bytes`` each, which together read
    exactly the records of the whole file (same records, same row numbers). A file of at most
    ``split_bytes``, a compressed one or one of a format not in ``SPLITTABLE`` is one range.
    JSON lines and CSV are scanned once for record boundaries (a quoted CSV field may span
    lines); Parquet is cut between row groups from the footer alone. Errors reading the layout
    are the caller's (``OSError``, ``ValueError``, ``csv.Error``)."""
    if size <= split_bytes or compression_of(url) or fmt not in SPLITTABLE:
        return [FileRange(url)]
    if fmt == "parquet":
        return _plan_parquet(url, split_bytes)
    if fmt == "jsonl":
        return _plan_json_lines(url, split_bytes)
    return _plan_csv(url, split_bytes, DELIMITERS[fmt])


def _plan_parquet(url: str, split_bytes: int) -> list[FileRange]:
    import pyarrow.parquet as pq

    fs, path = storage.arrow_filesystem(url)
    with fs.open_input_file(path) as fh:
        meta = pq.ParquetFile(fh).metadata
    out: list[FileRange] = []
    start = first = rows = nbytes = 0
    for g in range(meta.num_row_groups):
        rg = meta.row_group(g)
        stored = sum(rg.column(c).total_compressed_size for c in range(rg.num_columns))
        rows, nbytes = rows + rg.num_rows, nbytes + stored
        if nbytes >= split_bytes and g + 1 < meta.num_row_groups:
            out.append(FileRange(url, start, g + 1, first))
            start, first, nbytes = g + 1, rows, 0
    return [*out, FileRange(url, start, None, first)]


def _cut(url: str, ends: Iterator[int], split_bytes: int, start: int) -> list[FileRange]:
    """A cut after every record (``ends``: where each record ends, in order) that ends
    ``split_bytes`` past the last cut; the first record of the file is row 0 and starts at
    ``start``."""
    out: list[FileRange] = []
    first = 0
    for row, end in enumerate(ends, start=1):
        if end - start >= split_bytes:
            out.append(FileRange(url, start, end, first))
            start, first = end, row
    if not out:
        return [FileRange(url)]
    return [*out, FileRange(url, start, None, first)]


def _plan_json_lines(url: str, split_bytes: int) -> list[FileRange]:
    """A record is a non-blank line. The bytes are scanned in chunks, so a line of any length
    is never held whole."""
    fs, path = storage.get_fs(url)
    with fs.open(path, "rb") as f:
        return _cut(url, _json_line_ends(f), split_bytes, 0)


def _json_line_ends(f: Any) -> Iterator[int]:
    pos = 0
    blank = True  # the line being scanned has only whitespace so far
    while chunk := f.read(_SCAN_CHUNK):
        lines = chunk.split(b"\n")
        for line in lines[:-1]:
            pos += len(line) + 1
            if not (blank and not line.strip()):
                yield pos
            blank = True
        pos += len(lines[-1])
        blank = blank and not lines[-1].strip()
    if not blank:
        yield pos


def _plan_csv(url: str, split_bytes: int, delimiter: str) -> list[FileRange]:
    """The header is record zero (never cut from its file); records are what ``csv_records``
    delimits, as the readers do."""
    fs, path = storage.get_fs(url)
    with fs.open(path, "rb") as f:
        records = csv_records(iter(Lines(f)), delimiter)
        header = next(records, None)
        if header is None or header.fields is None:  # nothing to cut, or refused whole
            return [FileRange(url)]
        return _cut(url, (r.end for r in records), split_bytes, header.end)
