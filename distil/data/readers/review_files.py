"""Read review files (JSONL, CSV/TSV, Parquet) row by row, turning every bad row into a
dead-letter record (``records.DeadLetter``, the one every reader yields) with a reason instead of
an exception: the review reader of ``distil finetune`` and ``distil score``.

Every input record comes out exactly once, either as a ``Review`` or a ``DeadLetter``, which is
what lets ``distil score`` prove ``rows_in == scored + dead_letter``. A "record" is a non-blank
JSONL line, a CSV data row, a Parquet row, or, for a file that cannot be read at all (or stops
being readable part-way), one ``unreadable_file`` record.

A big file is read as several ``FileRange``s (``plan_ranges``: byte ranges cut at record
boundaries for JSONL/CSV, runs of row groups for Parquet), each by whichever worker gets it, with
the same rows, row numbers and dead letters as reading it whole: so a file's rows are spread over
the workers by reading, not by shuffling the rows themselves. Format detection, listing, the
range planner, decompression and the CSV record splitter are the corpus readers'
(``distil.data.readers.files``, ``.ranges``, ``.compression``, ``.delimited``): one
implementation for every stage.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from distil import storage
from distil.data.readers import ranges
from distil.data.readers.delimited import (
    DELIMITERS,
    csv_header,
    csv_records,
    unclosed_quote_detail,
)
from distil.data.readers.files import detect_format, find_files
from distil.data.readers.ranges import FileRange, Lines, open_range
from distil.data.readers.records import DeadLetter

# The formats reviews are read in (names of ``distil.data.readers.files.detect_format``).
FORMATS = ("jsonl", "csv", "tsv", "parquet")

# Dead-letter reasons (the ``reason`` column); docs/stages/finetune-and-score.md explains each.
MISSING_TEXT = "missing_text"
EMPTY_TEXT = "empty_text"
WRONG_TYPE = "wrong_type"
UNDECODABLE = "undecodable"
MALFORMED_LINE = "malformed_line"
MALFORMED_ROW = "malformed_row"
UNCLOSED_QUOTE = "unclosed_quote"  # a CSV line whose quoted field is never closed
BAD_ID = "bad_id"
UNREADABLE_FILE = "unreadable_file"
BAD_COLUMN = "bad_column"  # a --keep-columns value that does not convert to its declared type
INFERENCE_ERROR = (
    "inference_error"  # the model raised on this row alone (distil.pipelines.inference)
)

RAW_PREVIEW = 500  # characters of the raw record kept in the dead-letter row
INT64 = (-(2**63), 2**63 - 1)


@dataclass(frozen=True)
class Review:
    id: str
    text: str
    source_file: str
    source_row: int
    id_generated: bool
    columns: dict[str, Any] = field(default_factory=dict)  # --keep-columns, converted


def format_of(url: str, input_format: str = "auto") -> str:
    if input_format != "auto":
        return input_format
    fmt = detect_format(url)
    if fmt not in FORMATS:
        raise ValueError(f"{url}: cannot tell the format from the extension; pass --input-format")
    return fmt


def convert_column(value: Any, typ: str) -> Any:
    """One kept value as ``typ``; ``ValueError`` when it does not convert (an int64 out of range
    included: it would fail only when the Parquet part is written, after the inference). Missing,
    null and (for the typed columns) an empty CSV field are null."""
    if value is None:
        return None
    if typ == "string":
        return value if isinstance(value, str) else json.dumps(value, default=str)
    if isinstance(value, str):
        value = value.strip()
        if not value:
            return None
    if typ == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
            return value.lower() in ("true", "1")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
    elif typ == "int64" and not isinstance(value, bool):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        elif isinstance(value, str):
            value = int(value)  # ValueError for "4.5", "four"
        if isinstance(value, int):
            if not INT64[0] <= value <= INT64[1]:
                raise ValueError(f"{value} is out of the int64 range")
            return value
    elif typ == "float64" and isinstance(value, int | float | str) and not isinstance(value, bool):
        return float(value)
    raise ValueError(f"{value!r} is not {typ}")


def escape_text(s: str) -> str:
    """``s`` as valid UTF-8 text: bytes that were not UTF-8 (kept by ``surrogateescape``, as
    non-UTF-8 file names are) as ``\\xNN``, other lone surrogates as ``\\udNNN``. Anything that
    goes through a Beam coder or into Parquet goes through here first; valid text is unchanged."""
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        pass
    try:
        return s.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate surrogateescape did not make
        return s.encode("utf-8", "backslashreplace").decode("utf-8")


def _invalid_at(s: str) -> int | None:
    """Where ``s`` has a code point UTF-8 cannot hold (a lone surrogate), or None."""
    try:
        s.encode("utf-8")
        return None
    except UnicodeEncodeError as e:
        return e.start


def generated_id(source_file: str, row: int) -> str:
    """Stable id for a row without one: the same file URL and row number give the same id."""
    return hashlib.sha256(f"{escape_text(source_file)}\x00{row}".encode()).hexdigest()[:24]


def text_sha256(text: str) -> str:
    """The key of the task-level teacher cache."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def expand_inputs(inputs: list[str], input_format: str = "auto") -> list[str]:
    """Concrete file URLs for files, globs and directories, listed as every reader lists
    (``distil.data.readers.files.find_files``): a committed directory's listed files; in any
    other directory every file of a review format, leaving out staging/marker folders and the
    manifest; a file or a glob's files whatever their names (reading says what is wrong)."""
    out: list[str] = []
    for item in inputs:
        if "://" not in item:  # lineage and generated ids name the file absolutely
            item = os.path.abspath(item)
        if not any(c in item for c in "*?[") and storage.is_committed(item):
            out += [u for u in storage.committed_files(item) if _known(u, input_format)]
            continue
        files, folder = find_files(item, hidden=_not_an_input)
        out += [u for u in files if _known(u, input_format)] if folder else files
    if not out:
        raise FileNotFoundError(f"no review files found in {[storage.redact(i) for i in inputs]}")
    return out


def _not_an_input(rel: str) -> bool:
    """A path under a scored folder that is the commit protocol's, not a review file."""
    return rel.startswith((storage.STAGING, storage.MARKERS)) or rel.endswith(storage.MANIFEST)


def _known(url: str, input_format: str) -> bool:
    try:
        format_of(url, input_format)
        return True
    except ValueError:
        return False


def _check(
    rec: dict[str, Any],
    source: str,
    row: int,
    text_column: str,
    id_column: str | None,
    raw: str,
    keep: tuple[tuple[str, str], ...] = (),
) -> Review | DeadLetter:
    """One parsed record → a Review, or a DeadLetter saying what is wrong with it. Every string
    a Review carries is valid UTF-8 (Beam's coders and Parquet refuse anything else)."""
    rid: Any = rec.get(id_column) if id_column else None
    id_generated = rid is None or (isinstance(rid, str) and not rid.strip())
    if id_generated:
        rid = generated_id(source, row)
    elif isinstance(rid, bool) or not isinstance(rid, str | int | float):
        return DeadLetter(source, row, BAD_ID, f"id is {type(rid).__name__}", raw)
    elif isinstance(rid, float):
        rid = str(int(rid)) if rid.is_integer() else repr(rid)
    rid = str(rid)
    bad = _invalid_at(rid)
    if bad is not None:  # "\ud800" in JSON, undecodable CSV bytes: shown escaped, not scored
        detail = f"id is not valid Unicode (a lone surrogate at character {bad}); shown escaped"
        return DeadLetter(source, row, BAD_ID, detail, raw, escape_text(rid))

    def dead(reason: str, detail: str) -> DeadLetter:
        return DeadLetter(source, row, reason, detail, raw, rid)

    if text_column not in rec or rec[text_column] is None:
        return dead(MISSING_TEXT, f"no value in column {text_column!r}")
    text = rec[text_column]
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            return dead(UNDECODABLE, f"text bytes are not UTF-8: {e.reason} at {e.start}")
    if not isinstance(text, str):
        return dead(WRONG_TYPE, f"text is {type(text).__name__}, expected a string")
    bad = _invalid_at(text)
    if bad is not None:  # lone surrogates from JSON "\ud800" or undecodable CSV bytes
        return dead(UNDECODABLE, f"text has an invalid code point at {bad}")
    if not text.strip():
        return dead(EMPTY_TEXT, "text is empty or whitespace only")
    columns = {}
    for name, typ in keep:
        try:
            value = convert_column(rec.get(name), typ)
        except (ValueError, OverflowError, RecursionError) as e:
            return dead(BAD_COLUMN, escape_text(f"column {name!r}: {e}")[:RAW_PREVIEW])
        if isinstance(value, str) and (bad := _invalid_at(value)) is not None:
            detail = f"column {name!r}: not valid Unicode (a lone surrogate at character {bad})"
            return dead(BAD_COLUMN, detail)
        columns[name] = value
    return Review(rid, text, source, row, id_generated, columns)


def _preview(raw: bytes | str) -> str:
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", errors="backslashreplace")
    return escape_text(raw)[:RAW_PREVIEW]


def _record_preview(rec: dict[str, Any]) -> str:
    try:
        return _preview(json.dumps(rec, default=repr, ensure_ascii=False))
    except (RecursionError, ValueError) as e:  # nested too deeply, an int too long to print
        return f"<record not shown: {type(e).__name__}>"


def iter_jsonl(
    part: FileRange,
    text_column: str,
    id_column: str | None,
    keep: tuple[tuple[str, str], ...] = (),
) -> Iterator[Review | DeadLetter]:
    source = escape_text(part.url)
    with open_range(part) as f:
        row = part.first_row - 1
        for line in Lines(f, part.start, part.end):
            if not line.strip():
                continue
            row += 1
            raw = _preview(line.rstrip(b"\r\n"))
            try:
                decoded = line.decode("utf-8")
            except UnicodeDecodeError as e:
                detail = f"line is not UTF-8: {e.reason}"
                yield DeadLetter(source, row, UNDECODABLE, detail, raw)
                continue
            try:
                rec = json.loads(decoded)
            except json.JSONDecodeError as e:
                yield DeadLetter(source, row, MALFORMED_LINE, f"invalid JSON: {e.msg}", raw)
                continue
            except ValueError as e:  # e.g. an integer of more digits than Python converts
                detail = _preview(f"invalid JSON: {e}")
                yield DeadLetter(source, row, MALFORMED_LINE, detail, raw)
                continue
            except RecursionError:
                detail = "invalid JSON: nested too deeply to parse"
                yield DeadLetter(source, row, MALFORMED_LINE, detail, raw)
                continue
            if not isinstance(rec, dict):
                detail = f"JSON {type(rec).__name__}, expected an object"
                yield DeadLetter(source, row, MALFORMED_LINE, detail, raw)
                continue
            yield _check(rec, source, row, text_column, id_column, raw, keep)


def iter_csv(
    part: FileRange,
    text_column: str,
    id_column: str | None,
    delimiter: str = ",",
    keep: tuple[tuple[str, str], ...] = (),
) -> Iterator[Review | DeadLetter]:
    source = escape_text(part.url)
    header = csv_header(part.url, delimiter)
    if header is None:
        return
    with open_range(part) as fb:
        records = csv_records(iter(Lines(fb, part.start, part.end)), delimiter, part.start)
        if part.start == 0:
            next(records)  # the header, read above
        for row, rec in enumerate(records, start=part.first_row):
            raw = _preview(rec.first_line.rstrip(b"\r\n"))
            if rec.fields is None:
                detail = _preview(unclosed_quote_detail(rec))
                yield DeadLetter(source, row, UNCLOSED_QUOTE, detail, raw)
                continue
            fields = rec.fields
            raw = _preview(delimiter.join(fields))
            if len(fields) != len(header):
                detail = f"{len(fields)} fields, header has {len(header)}"
                yield DeadLetter(source, row, MALFORMED_ROW, detail, raw)
                continue
            yield _check(dict(zip(header, fields, strict=True)), source, row, text_column,
                         id_column, raw, keep)  # fmt: skip


def iter_parquet(
    part: FileRange,
    text_column: str,
    id_column: str | None,
    batch_rows: int = 8192,
    keep: tuple[tuple[str, str], ...] = (),
) -> Iterator[Review | DeadLetter]:
    import pyarrow.parquet as pq

    source = escape_text(part.url)
    fs, path = storage.arrow_filesystem(part.url)
    with fs.open_input_file(path) as fh:
        pf = pq.ParquetFile(fh)
        names = set(pf.schema_arrow.names)
        wanted = dict.fromkeys([text_column, id_column, *(n for n, _ in keep)])
        cols = [c for c in wanted if c and c in names]
        end = pf.num_row_groups if part.end is None else part.end
        row = part.first_row
        batches = pf.iter_batches(
            batch_size=batch_rows, row_groups=range(part.start, end), columns=cols or None
        )
        for batch in batches:
            recs = batch.to_pylist() if cols else [{}] * batch.num_rows
            for rec in recs:
                raw = _record_preview(rec)
                yield _check(rec, source, row, text_column, id_column, raw, keep)
                row += 1


def iter_reviews(
    source: str | FileRange,
    text_column: str,
    id_column: str | None,
    input_format: str = "auto",
    keep: tuple[tuple[str, str], ...] = (),
) -> Iterator[Review | DeadLetter]:
    """Every record of one file (a URL) or of one range of it, good or bad. Never raises for bad
    data: a file that cannot be read (corrupt, truncated archive, wrong format) ends with one
    ``unreadable_file`` record. ``source_file`` is the URL as valid UTF-8 (``escape_text``)."""
    part = FileRange(source) if isinstance(source, str) else source
    url = part.url
    fmt = format_of(url, input_format)
    n = 0
    try:
        if fmt == "jsonl":
            gen = iter_jsonl(part, text_column, id_column, keep)
        elif fmt in ("csv", "tsv"):
            gen = iter_csv(part, text_column, id_column, DELIMITERS[fmt], keep)
        else:
            gen = iter_parquet(part, text_column, id_column, keep=keep)
        for item in gen:
            n += 1
            yield item
    except (OSError, ValueError, EOFError, csv.Error, io.UnsupportedOperation, RecursionError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        detail = _preview(f"{type(e).__name__} after {n} records: {e}")
        yield DeadLetter(escape_text(url), -1, UNREADABLE_FILE, detail)


def default_split_bytes(total_bytes: int) -> int:
    """Ranges of 1/64 of a run's input: enough that one file alone keeps dozens of workers busy
    and ranges of unequal length even out; never so small that opening a range costs more than
    reading it (64 KiB), nor so big that a straggler range holds up the run (64 MiB)."""
    return min(max(total_bytes // 64, 64 << 10), 64 << 20)


def plan_ranges(
    url: str, size: int, split_bytes: int, input_format: str = "auto"
) -> list[FileRange]:
    """``url`` as ranges of about ``split_bytes`` each (``distil.data.readers.ranges``), which
    together read exactly the records of the whole file (same rows, same ``source_row``s). A
    file whose format or layout cannot be read here is one range (reading it then says what is
    wrong)."""
    try:
        return ranges.plan_ranges(url, size, split_bytes, format_of(url, input_format))
    except (OSError, ValueError, EOFError, csv.Error) as e:
        if isinstance(e, FileNotFoundError):
            raise
        return [FileRange(url)]
