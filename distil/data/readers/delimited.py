"""CSV/TSV records: quoted fields spanning lines kept whole, an unclosed quote confined to its
line. One implementation for every reader of delimited files (``distil prepare``'s corpus
reader here, the review reader ``review_files``) and for the range planner
(``distil.data.readers.ranges``), so a range starts exactly where whole-file reading starts a
record."""

from __future__ import annotations

import csv
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

from distil.data.readers.compression import open_stream
from distil.data.readers.records import DeadLetter, Record, _from_mapping

DELIMITERS = {"csv": ",", "tsv": "\t"}
# A quoted field may span lines, but not more bytes than this: a quote that is never closed
# would otherwise make the rest of the file one field, held in memory.
MAX_CSV_RECORD_BYTES = 8 << 20
# csv's own limit (128 KiB a field) would make one long text end the whole file
csv.field_size_limit(max(csv.field_size_limit(), 1 << 30))


@dataclass(frozen=True)
class CsvRecord:
    """One CSV record and the bytes it spans; ``fields`` None: its first line opens a quoted
    field that does not close into a well-formed row, and the record is that line alone."""

    fields: list[str] | None
    start: int
    end: int
    first_line: bytes


def csv_records(lines: Iterator[bytes], delimiter: str, start: int = 0) -> Iterator[CsvRecord]:
    """The CSV records of ``lines`` (bytes, with their endings; the first at byte ``start``).

    csv itself, left alone, reads an unclosed quote to the end of the file, merging every row
    after it into one field. Here csv runs strict, and a record that fails after spanning
    several lines (a quote closed by a later row's quote, the end of the input, or more than
    ``MAX_CSV_RECORD_BYTES``) becomes its first line alone, with ``fields`` None; parsing starts
    again on the next line. A one-line record that fails strict parsing (``a,"b" c``: text
    after a closing quote) is read the lenient way, as before. The same function cuts ranges
    and reads them, so a range starts exactly where whole-file reading starts a record."""
    pending: deque[bytes] = deque()  # lines taken by a failed record, read again
    taken: list[bytes] = []
    state = {"size": 0, "ended": None}  # ended: None, "end" of the input or "cap"

    def feed() -> Iterator[str]:
        while True:
            line = pending.popleft() if pending else next(lines, None)
            if line is None:
                state["ended"] = "end"
                return
            if taken and state["size"] + len(line) > MAX_CSV_RECORD_BYTES:
                pending.appendleft(line)
                state["ended"] = "cap"
                return
            taken.append(line)
            state["size"] += len(line)
            # surrogateescape keeps undecodable bytes as lone surrogates, so one bad row is
            # caught by its reader (a dead letter) instead of failing the whole file
            yield line.decode("utf-8", errors="surrogateescape")

    pos = start
    while True:
        state["ended"] = None
        reader = csv.reader(feed(), delimiter=delimiter, strict=True)
        while True:
            taken.clear()
            state["size"] = 0
            try:
                fields = next(reader)
            except StopIteration:
                if not pending:
                    return
                break  # cannot happen (csv asks for a line only inside a record); be safe
            except csv.Error:
                if not taken:
                    raise
                first = taken[0]
                if len(taken) == 1 and state["ended"] is None:
                    text = first.decode("utf-8", errors="surrogateescape")
                    lenient = next(csv.reader([text], delimiter=delimiter), [])
                    yield CsvRecord(lenient, pos, pos + len(first), first)
                    pos += len(first)
                    continue
                yield CsvRecord(None, pos, pos + len(first), first)
                pos += len(first)
                pending.extendleft(reversed(taken[1:]))
                break  # a fresh reader over the lines after this one
            end = pos + state["size"]
            yield CsvRecord(fields, pos, end, taken[0])
            pos = end


def csv_header(url: str, delimiter: str) -> list[str] | None:
    """The column names of a CSV/TSV file (byte-order mark and spaces stripped), None for an
    empty file; ``ValueError`` when the header opens a quote it never closes."""
    with open_stream(url) as f:
        first = next(csv_records(iter(f), delimiter), None)
    if first is None:
        return None
    if first.fields is None:
        raise ValueError("the header opens a quoted field that does not close into a row")
    return header_names(first.fields)


def header_names(fields: list[str]) -> list[str]:
    """Column names as written, less a byte-order mark and the spaces around each."""
    return [h.lstrip("\ufeff").strip() for h in fields]


def unclosed_quote_detail(rec: CsvRecord) -> str:
    """Why an unclosed-quote record is its first line alone: the same words whichever range
    reads it (where the scan stopped differs)."""
    return (
        "unclosed quote: the quoted field opened on this line does not close into a "
        f"well-formed row; bytes [{rec.start}, {rec.end}) of the file are this row "
        "alone, and the next line is read as a row of its own"
    )


def read_csv(
    lines: Iterator[bytes],
    source: str,
    delimiter: str,
    text_column: str,
    id_column: str | None,
    max_record_bytes: int,
    header: list[str] | None = None,
    start: int = 0,
    first_range: bool = True,
) -> Iterator[Record]:
    """Corpus records of a CSV/TSV file: one a data row, ``text_column``/``id_column`` named by
    the header, the offset the byte where the row starts. ``lines`` start at byte ``start``;
    ``header`` None: its first record is the header (a whole file), else the file's header read
    apart (a range). A header without ``text_column`` is one ``missing_text_column`` record for
    the whole file, given by its ``first_range``."""
    records = csv_records(lines, delimiter, start)
    if header is None:
        first = next(records, None)
        if first is None:
            return
        if first.fields is None:
            detail = "the header opens a quoted field that does not close into a row"
            yield DeadLetter(source, 0, "malformed_row", detail)
            return
        header = header_names(first.fields)
    if text_column not in header:
        if first_range:
            yield DeadLetter(source, 0, "missing_text_column", f"columns: {header[:20]}")
        return
    for rec in records:
        yield _csv_record(rec, header, source, text_column, id_column, max_record_bytes)


def _csv_record(
    rec: CsvRecord,
    header: list[str],
    source: str,
    text_column: str,
    id_column: str | None,
    max_record_bytes: int,
) -> Record:
    if rec.end - rec.start > max_record_bytes:
        detail = f"{rec.end - rec.start} bytes > max_line_bytes={max_record_bytes} (one CSV row)"
        return DeadLetter(source, rec.start, "line_too_long", detail)
    if rec.fields is None:
        return DeadLetter(source, rec.start, "unclosed_quote", unclosed_quote_detail(rec))
    if len(rec.fields) != len(header):
        detail = f"{len(rec.fields)} fields, header has {len(header)}"
        return DeadLetter(source, rec.start, "malformed_row", detail)
    row = dict(zip(header, rec.fields, strict=True))
    for column in (text_column, id_column):
        try:
            row.get(column or "", "").encode("utf-8")
        except UnicodeEncodeError as e:  # undecodable bytes, kept by surrogateescape
            detail = f"column {column!r} is not UTF-8 at character {e.start}"
            return DeadLetter(source, rec.start, "undecodable_utf8", detail)
    if id_column and not row.get(id_column, "").strip():
        row.pop(id_column, None)  # an empty id field: the default id, as a missing one
    return _from_mapping(row, source, rec.start, text_column, id_column)
