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
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import json
import posixpath
import re
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

from distil import storage

FORMATS = ("wiki", "text", "jsonl", "parquet")
_SUFFIXES = {
    "wiki": (".xml.bz2", ".xml.gz", ".xml"),
    "text": (".txt", ".txt.gz", ".txt.bz2"),
    "jsonl": (".jsonl", ".jsonl.gz", ".jsonl.bz2", ".json", ".ndjson"),
    "parquet": (".parquet",),
}


@dataclass(frozen=True)
class Document:
    source: str
    offset: int
    doc_id: str
    text: str
    continues: bool = False  # True: a further piece of the previous document (same doc_id)


@dataclass(frozen=True)
class DeadLetter:
    source: str
    offset: int
    reason: str
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "offset": self.offset,
            "reason": self.reason,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class Skipped:
    """A record deliberately left out (wiki redirect or non-article namespace): not an error."""

    source: str
    offset: int
    reason: str


Record = Document | DeadLetter | Skipped


# A book paragraph is held whole until its end; past this size it is handed on in pieces.
MAX_PIECE_CHARS = 1 << 20


class BadInputError(ValueError):
    """Raised in ``--strict`` mode for the first bad record."""


# Wikimedia names split dumps like ``…pages-articles1.xml-p10p30302.bz2``: ".xml" is not last.
_WIKI_NAME = re.compile(r"\.xml([-.][^/]*)?\.(bz2|gz)$|\.xml$")


def detect_format(name: str) -> str | None:
    lower = name.lower()
    if _WIKI_NAME.search(lower):
        return "wiki"
    for fmt, suffixes in _SUFFIXES.items():
        if lower.endswith(suffixes):
            return fmt
    return None


def list_inputs(urls: list[str], fmt: str = "auto") -> list[str]:
    """Input shard URLs in a stable order: folders are walked, globs expanded, files kept.

    Files whose names start with ``_`` or ``.`` (markers, staging) and ``manifest.json`` are not
    data. With ``fmt="auto"`` a folder contributes only files with a known extension.
    """
    out: list[str] = []
    for url in urls:
        fs, path = storage.get_fs(url)
        prefix = url.split("://", 1)[0] + "://" if "://" in url else ""
        if any(ch in path for ch in "*?["):
            entries = fs.glob(path, detail=True)
            found = sorted(p for p, info in entries.items() if info.get("type") != "directory")
        elif fs.isdir(path):
            # one listing call, files only (no per-file request on object storage)
            found = sorted(p for p in fs.find(path) if not _hidden(posixpath.relpath(p, path)))
            if fmt == "auto":
                found = [p for p in found if detect_format(p)]
        elif fs.exists(path):
            found = [path]
        else:
            raise FileNotFoundError(f"input {storage.redact(url)} does not exist")
        out.extend(prefix + p if prefix else p for p in found)
    if not out:
        raise FileNotFoundError(f"no input files under {[storage.redact(u) for u in urls]}")
    dupes = sorted(u for u, n in Counter(out).items() if n > 1)
    if dupes:
        raise ValueError(f"input files listed twice: {dupes[:5]}")
    return out


def _hidden(rel: str) -> bool:
    return any(part.startswith(("_", ".")) for part in rel.split("/")) or rel == storage.MANIFEST


class HashingReader(io.RawIOBase):
    """Wraps a binary file: hashes every byte read, so the input's content hash comes free."""

    def __init__(self, f: IO[bytes]):
        super().__init__()
        self._f = f
        self.sha256 = hashlib.sha256()
        self.bytes_read = 0

    def readinto(self, buf) -> int:  # type: ignore[override]
        b = self._f.read(len(buf))
        n = len(b)
        buf[:n] = b
        self.sha256.update(b)
        self.bytes_read += n
        return n

    def readable(self) -> bool:
        return True

    def drain(self) -> None:
        """Read to the end (after an early stop), so the hash covers the whole file."""
        buf = bytearray(1 << 22)
        while self.readinto(buf):
            pass

    def hexdigest(self) -> str:
        return self.sha256.hexdigest()


def _decompressed(raw: HashingReader, name: str) -> IO[bytes]:
    lower = name.lower()
    if lower.endswith(".bz2"):
        return bz2.BZ2File(raw)  # type: ignore[arg-type]
    if lower.endswith(".gz"):
        return gzip.GzipFile(fileobj=raw)  # type: ignore[arg-type]
    return io.BufferedReader(raw, buffer_size=1 << 20)


def _truncation_reason(exc: BaseException) -> tuple[str, str] | None:
    if isinstance(exc, EOFError):
        return "truncated_compressed_stream", str(exc)
    if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError):
        return "corrupt_compressed_stream", str(exc)
    return None


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


def _from_mapping(
    obj: Any, source: str, offset: int, text_column: str, id_column: str | None
) -> Document | DeadLetter:
    if not isinstance(obj, dict):
        return DeadLetter(source, offset, "not_an_object", type(obj).__name__)
    if text_column not in obj or obj[text_column] is None:
        return DeadLetter(source, offset, "missing_text", f"no {text_column!r} field")
    text = obj[text_column]
    if not isinstance(text, str):
        return DeadLetter(source, offset, "text_not_string", type(text).__name__)
    if not text.strip():
        return DeadLetter(source, offset, "empty_text", "")
    doc_id = f"{posixpath.basename(source)}:{offset}"
    if id_column and obj.get(id_column) is not None:
        doc_id = str(obj[id_column])
    return Document(source, offset, doc_id, text)


def read_parquet(
    url: str, source: str, text_column: str, id_column: str | None, batch_rows: int = 1024
) -> Iterator[Record]:
    import pyarrow.parquet as pq

    fs, path = storage.arrow_filesystem(url)
    with fs.open_input_file(path) as f:
        pf = pq.ParquetFile(f)
        names = pf.schema_arrow.names
        if text_column not in names:
            yield DeadLetter(source, 0, "missing_text_column", f"columns: {names[:20]}")
            return
        columns = [text_column] + ([id_column] if id_column and id_column in names else [])
        row = 0
        for batch in pf.iter_batches(batch_size=batch_rows, columns=columns):
            cols = batch.to_pydict()
            ids = cols.get(id_column) if id_column else None
            for i, text in enumerate(cols[text_column]):
                obj = {text_column: text}
                if ids is not None:
                    obj[id_column] = ids[i]  # type: ignore[index]
                yield _from_mapping(obj, source, row, text_column, id_column)
                row += 1


# --- Wikipedia ----------------------------------------------------------------------------------

# Tags whose content is not running prose: references, tables, maths, galleries, etc.
_DROP_TAGS = {
    "ref",
    "references",
    "table",
    "gallery",
    "math",
    "timeline",
    "score",
    "syntaxhighlight",
}
_DROP_LINK_NS = ("file:", "image:", "category:", "media:")
_BLANKS = re.compile(r"\n\s*\n+")
_SPACES = re.compile(r"[ \t]+")
_STYLE_QUOTES = re.compile(r"'{2,}")


def _unquote(m: re.Match) -> str:
    """Drop wiki bold/italic quote runs: '' italic, ''' bold, ''''' both; 4 = an apostrophe
    followed by bold (''''s -> 's)."""
    n = len(m.group(0))
    return "'" if n == 4 else "'" * max(n - 5, 0)


def wikitext_to_text(wikitext: str) -> str:
    """Plain prose from wikitext with ``mwparserfromhell``: templates, refs, tables, files and
    categories are dropped; links keep their visible text; headings and lists keep their words."""
    import mwparserfromhell
    from mwparserfromhell.nodes import Tag, Template, Wikilink

    # skip_style_tags: bold/italic ('' ''') are left as text and removed below. Parsing them is
    # ~30% of mwparserfromhell's time and can backtrack badly on unbalanced quotes.
    code = mwparserfromhell.parse(wikitext, skip_style_tags=True)

    def keep(node: Any) -> bool:
        if isinstance(node, Template):
            return False
        if isinstance(node, Tag) and str(node.tag).lower() in _DROP_TAGS:
            return False
        return not (
            isinstance(node, Wikilink)
            and str(node.title).strip().lower().lstrip(":").startswith(_DROP_LINK_NS)
        )

    code.nodes = [n for n in code.nodes if keep(n)]
    text = _STYLE_QUOTES.sub(_unquote, code.strip_code(normalize=True, collapse=True))
    lines = [_SPACES.sub(" ", ln).strip() for ln in text.splitlines()]
    return _BLANKS.sub("\n\n", "\n".join(lines)).strip()


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def read_wiki(f: IO[bytes], source: str) -> Iterator[Record]:
    """A MediaWiki ``pages-articles`` XML dump: main-namespace (ns 0) articles, redirects dropped.

    A broken stream (truncated bz2, XML error) ends the file with one dead letter at the page
    being read; the pages before it are kept.
    """
    page_no = 0
    root = None
    try:
        for event, elem in ET.iterparse(f, events=("start", "end")):
            if root is None:
                root = elem
            if event != "end" or _local(elem.tag) != "page":
                continue
            yield _wiki_page(elem, source, page_no)
            page_no += 1
            elem.clear()
            root.clear()  # drop finished pages so memory stays flat over a multi-GB dump
    except ET.ParseError as e:
        yield DeadLetter(source, page_no, "xml_error", str(e)[:200])
    except (EOFError, OSError) as e:
        reason = _truncation_reason(e)
        if reason is None:
            raise
        yield DeadLetter(source, page_no, reason[0], reason[1])


def _wiki_page(page: ET.Element, source: str, page_no: int) -> Record:
    ns = title = page_id = text = None
    redirect = False
    for child in page:
        name = _local(child.tag)
        if name == "ns":
            ns = (child.text or "").strip()
        elif name == "title":
            title = child.text or ""
        elif name == "id":
            page_id = (child.text or "").strip()
        elif name == "redirect":
            redirect = True
        elif name == "revision":
            for sub in child:
                if _local(sub.tag) == "text":
                    text = sub.text or ""
    if ns != "0":
        return Skipped(source, page_no, f"namespace_{ns}")
    if redirect or (text or "").lstrip().lower().startswith("#redirect"):
        return Skipped(source, page_no, "redirect")
    if text is None:
        return DeadLetter(source, page_no, "missing_text", f"page {title!r} has no <text>")
    try:
        plain = wikitext_to_text(text)
    except Exception as e:  # a parser bug on one page must not end the dump
        return DeadLetter(source, page_no, "wikitext_error", f"{type(e).__name__}: {e}"[:200])
    if not plain:
        return DeadLetter(source, page_no, "empty_text", f"page {title!r} has no prose")
    return Document(source, page_no, page_id or f"{title}", plain)


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
