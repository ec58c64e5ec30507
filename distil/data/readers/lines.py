"""Line formats: plain-text books and JSONL, read line by line with a byte limit."""

from __future__ import annotations

import json
import posixpath
from collections.abc import Iterator
from typing import IO

from distil.data.readers.files import _truncation_reason
from distil.data.readers.records import DeadLetter, Document, Record, _from_mapping

# A book paragraph is held whole until its end; past this size it is handed on in pieces.
MAX_PIECE_CHARS = 1 << 20


def _read_lines(
    f: IO[bytes], source: str, max_line_bytes: int
) -> Iterator[tuple[int, bytes | None, DeadLetter | None]]:
    """(offset, line, None) per line, or (offset, None, dead letter) for an over-long line or a
    broken compressed stream (which ends the file). Over-long lines are skipped in chunks, never
    held whole."""
    offset = 0
    while True:
        try:
            line = f.readline(max_line_bytes + 1)
        except (EOFError, OSError) as e:
            reason = _truncation_reason(e)
            if reason is None:
                raise
            yield offset, None, DeadLetter(source, offset, reason[0], reason[1])
            return
        if not line:
            return
        if len(line) > max_line_bytes and not line.endswith(b"\n"):
            start, size = offset, len(line)
            try:
                while not line.endswith(b"\n"):
                    line = f.readline(1 << 20)
                    if not line:
                        break
                    size += len(line)
            except (EOFError, OSError) as e:
                reason = _truncation_reason(e)
                if reason is None:
                    raise
                yield start, None, DeadLetter(source, start, reason[0], reason[1])
                return
            offset += size
            detail = f"{size} bytes > max_line_bytes={max_line_bytes}"
            yield start, None, DeadLetter(source, start, "line_too_long", detail)
            continue
        yield offset, line, None
        offset += len(line)


def _decode(line: bytes, source: str, offset: int) -> str | DeadLetter:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError as e:
        return DeadLetter(source, offset, "undecodable_utf8", f"{e.reason} at byte {e.start}")


def read_text(
    f: IO[bytes], source: str, max_line_bytes: int, max_piece_chars: int = MAX_PIECE_CHARS
) -> Iterator[Record]:
    """A plain-text book: one file is one document; blank lines separate paragraphs.

    Each paragraph is one record (its lines joined by spaces); a paragraph longer than
    ``max_piece_chars`` (a book without blank lines) is cut at a line end into several records,
    which tokenizes the same since a line end is whitespace. A bad line (undecodable, too long)
    is dead-lettered on its own and the paragraph around it keeps its other lines.
    """
    doc_id = posixpath.basename(source)
    started = False
    para: list[str] = []
    para_offset = para_chars = 0
    for offset, line, dead in _read_lines(f, source, max_line_bytes):
        if dead is not None:
            yield dead
            continue
        assert line is not None
        text = _decode(line, source, offset)
        if isinstance(text, DeadLetter):
            yield text
            continue
        if text.strip():
            if not para:
                para_offset, para_chars = offset, 0
            para.append(text.strip())
            para_chars += len(para[-1]) + 1
            if para_chars < max_piece_chars:
                continue
        if para:
            yield Document(source, para_offset, doc_id, " ".join(para), continues=started)
            started, para = True, []
    if para:
        yield Document(source, para_offset, doc_id, " ".join(para), continues=started)
        started = True
    if not started:
        yield DeadLetter(source, 0, "empty_text", "the book has no text")


def read_jsonl(
    f: IO[bytes], source: str, text_column: str, id_column: str | None, max_line_bytes: int
) -> Iterator[Record]:
    """One JSON object a line; ``text_column`` holds the text, ``id_column`` (optional) its id.
    Blank lines are not records."""
    for offset, line, dead in _read_lines(f, source, max_line_bytes):
        if dead is not None:
            yield dead
            continue
        assert line is not None
        if not line.strip():
            continue
        raw = _decode(line, source, offset)
        if isinstance(raw, DeadLetter):
            yield raw
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as e:
            yield DeadLetter(source, offset, "malformed_json", str(e)[:200])
            continue
        yield _from_mapping(obj, source, offset, text_column, id_column)
