"""Line formats: plain-text books and JSON lines, read line by line with a byte limit, and a
``.json`` file holding one JSON array, read element by element."""

from __future__ import annotations

import io
import json
import posixpath
import re
from collections.abc import Iterator
from typing import IO

from distil.data.readers.compression import Prefixed
from distil.data.readers.files import _truncation_reason
from distil.data.readers.records import DeadLetter, Document, Record, _from_mapping

# A book paragraph is held whole until its end; past this size it is handed on in pieces.
MAX_PIECE_CHARS = 1 << 20


def _read_lines(
    f: IO[bytes], source: str, max_line_bytes: int, start: int = 0, end: int | None = None
) -> Iterator[tuple[int, bytes | None, DeadLetter | None]]:
    """(offset, line, None) per line, or (offset, None, dead letter) for an over-long line or a
    broken compressed stream (which ends the file). Over-long lines are skipped in chunks, never
    held whole. ``f`` is at byte ``start``; lines starting at ``end`` or later are not read."""
    offset = start
    while end is None or offset < end:
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
    f: IO[bytes],
    source: str,
    text_column: str,
    id_column: str | None,
    max_line_bytes: int,
    start: int = 0,
    end: int | None = None,
) -> Iterator[Record]:
    """One JSON object a line; ``text_column`` holds the text, ``id_column`` (optional) its id.
    Blank lines are not records. ``start``/``end``: a byte range (``_read_lines``)."""
    for offset, line, dead in _read_lines(f, source, max_line_bytes, start, end):
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


_WHITESPACE = b" \t\r\n"
_OUTSIDE = re.compile(rb'[\[\]{},"]')  # what changes the state outside a string
_INSIDE = re.compile(rb'["\\]')  # the end of a string, or an escape
_READ = 1 << 20


def json_array_head(f: IO[bytes]) -> tuple[bool, IO[bytes]]:
    """Whether the JSON text on ``f`` is an array (its first byte that is not whitespace is
    ``[``), and a stream reading ``f`` from its start again."""
    head = b""
    while not head.lstrip(_WHITESPACE):
        chunk = f.read(4096)
        if not chunk:
            break
        head += chunk
    rest = io.BufferedReader(Prefixed(head, f), buffer_size=_READ)
    return head.lstrip(_WHITESPACE).startswith(b"["), rest


class _Element:
    """The bytes of the array element being scanned: kept up to ``limit``, counted beyond."""

    def __init__(self, start: int, limit: int):
        self.start, self.limit = start, limit
        self.data = bytearray()
        self.size = 0

    def add(self, b: bytes) -> None:
        self.size += len(b)
        room = self.limit - len(self.data)
        if room > 0:
            self.data += b[:room]

    @property
    def offset(self) -> int:
        """Where its first byte that is not whitespace is."""
        return self.start + len(self.data) - len(self.data.lstrip(_WHITESPACE))


def read_json_array(
    f: IO[bytes], source: str, text_column: str, id_column: str | None, max_record_bytes: int
) -> Iterator[Record]:
    """One JSON array of objects (``json_array_head`` said so): one record per element, its
    offset the byte where the element starts. The elements are found by a scan that follows
    strings and nesting, then parsed one at a time, so the array is never held whole and one
    bad element is one dead letter (``malformed_json``; ``line_too_long`` past
    ``max_record_bytes``, skipped without being held). A file that ends inside the array or
    has more after it ends with one dead letter there."""
    pos = depth = 0  # pos: stream offset of the chunk's first byte
    in_str = escaped = started = False
    elem: _Element | None = None
    elements = 0
    while True:
        chunk = _read_chunk(f, source, elem.offset if elem else pos)
        if isinstance(chunk, DeadLetter):
            yield chunk
            return
        if not chunk:
            break
        i, n = 0, len(chunk)
        if not started:
            body = chunk.lstrip(_WHITESPACE)
            if not body:
                pos += n
                continue
            i = n - len(body) + 1  # past the "["
            started = True
            elem = _Element(pos + i, max_record_bytes)
        while i < n:
            assert elem is not None
            if escaped:
                elem.add(chunk[i : i + 1])
                escaped, i = False, i + 1
            elif in_str:
                m = _INSIDE.search(chunk, i)
                if m is None:
                    elem.add(chunk[i:])
                    break
                if chunk[m.start()] == 0x5C:  # backslash: the next byte is escaped
                    elem.add(chunk[i : m.end()])
                    escaped = True
                else:
                    elem.add(chunk[i : m.end()])
                    in_str = False
                i = m.end()
            else:
                m = _OUTSIDE.search(chunk, i)
                if m is None:
                    elem.add(chunk[i:])
                    break
                c = chunk[m.start()]
                if depth == 0 and c in b",]":
                    elem.add(chunk[i : m.start()])
                    closing = c == 0x5D
                    if not (closing and elements == 0 and not elem.data.strip(_WHITESPACE)):
                        yield _array_element(elem, source, text_column, id_column)
                    elements += 1
                    i = m.end()
                    if closing:
                        yield from _after_array(f, chunk[i:], pos + i, source)
                        return
                    elem = _Element(pos + i, max_record_bytes)
                    continue
                elem.add(chunk[i : m.end()])
                if c == 0x22:  # '"'
                    in_str = True
                elif c in b"[{":
                    depth += 1
                elif c != 0x2C and depth > 0:  # "]" or "}" closing a nested value
                    depth -= 1
                i = m.end()
        pos += n
    if not started:
        yield DeadLetter(source, 0, "malformed_json", "the file has no JSON array")
        return
    assert elem is not None
    detail = "the file ends inside the JSON array (truncated?); no closing ]"
    yield DeadLetter(source, elem.offset, "malformed_json", detail)


def _read_chunk(f: IO[bytes], source: str, offset: int) -> bytes | DeadLetter:
    """The next bytes of ``f``, or the dead letter (at ``offset``) of a compressed stream that
    ends early or is corrupt."""
    try:
        # read1: what one decompression step gives, so the bytes before a truncation are
        # handed out before the error (a plain read of a big chunk would drop them with it)
        return f.read1(_READ)  # type: ignore[attr-defined]
    except (EOFError, OSError) as e:
        reason = _truncation_reason(e)
        if reason is None:
            raise
        return DeadLetter(source, offset, reason[0], reason[1])


def _array_element(elem: _Element, source: str, text_column: str, id_column: str | None) -> Record:
    offset = elem.offset
    if elem.size > elem.limit:
        detail = f"{elem.size} bytes > max_line_bytes={elem.limit} (one JSON array element)"
        return DeadLetter(source, offset, "line_too_long", detail)
    data = bytes(elem.data).strip(_WHITESPACE)
    if not data:
        return DeadLetter(source, offset, "malformed_json", "an empty array element (',,' or ',]')")
    try:
        obj = json.loads(data)
    except UnicodeDecodeError as e:
        return DeadLetter(source, offset, "undecodable_utf8", f"{e.reason} at byte {e.start}")
    except (ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError
        return DeadLetter(source, offset, "malformed_json", str(e)[:200])
    return _from_mapping(obj, source, offset, text_column, id_column)


def _after_array(f: IO[bytes], rest: bytes, offset: int, source: str) -> Iterator[Record]:
    """Only whitespace may follow the array; anything else is one dead letter (never read as
    more records: where they would start is unknown)."""
    while True:
        body = rest.lstrip(_WHITESPACE)
        if body:
            at = offset + len(rest) - len(body)
            detail = f"data after the closing ] of the JSON array: {body[:40]!r}"
            yield DeadLetter(source, at, "malformed_json", detail)
            return
        offset += len(rest)
        more = _read_chunk(f, source, offset)
        if isinstance(more, DeadLetter):
            yield more
            return
        if not more:
            return
        rest = more
