"""One bz2 Wikipedia dump as many read units: byte ranges of whole bz2 streams.

The real ``…-pages-articles-multistream.xml.bz2`` is one ~22 GB file made of independent bz2
streams (100 pages each; the ``<mediawiki>``/``<siteinfo>`` header is stream 0), and
``…-multistream-index.txt.bz2`` lists ``offset:page_id:title`` per page. ``plan_ranges`` groups
the streams into ranges of about ``target_bytes``: from the index when it sits next to the dump,
else by probing for bz2 stream headers near each cut point (any multi-stream file, e.g. one
recompressed with ``pbzip2``). A single-stream file cannot be cut cheaply: it stays one unit,
with a WARNING.

``read_wiki_range`` reads one range as a small well-formed dump: the header, then the pages
whose ``<page>`` tag starts inside the range (a page cut by a stream boundary, as ``pbzip2``
does, is finished from the next streams; its tail is skipped by the next range), then
``</mediawiki>``. So every page is read by exactly one range, in dump order.
"""

from __future__ import annotations

import bz2
import io
import logging
import re
from collections.abc import Iterator
from typing import IO

from distil import storage
from distil.data.readers.records import Record
from distil.data.readers.wiki import read_wiki

log = logging.getLogger("distil.prepare")

STREAM_MAGIC = re.compile(rb"BZh[1-9]\x31\x41\x59\x26\x53\x59")  # "BZh" level, block magic (pi)
PROBE_BYTES = 16 << 20  # how far past a cut point to look for the next stream header
_CHUNK = 1 << 20
_PAGE_TAG = re.compile(rb"<(/?)page>")
_CLOSE = b"</mediawiki>\n"
SPLIT_HELP = (
    "use the multistream dump with its index (…-pages-articles-multistream.xml.bz2 and "
    "…-multistream-index.txt.bz2 in the same folder), or recompress into many streams: "
    "bzcat DUMP.xml.bz2 | pbzip2 -c > DUMP-multistream.xml.bz2"
)


class BadIndexError(ValueError):
    """A multistream index that does not describe its dump."""


def index_url(url: str) -> str | None:
    """Where a multistream dump's index lives (Wikimedia's naming), or None for other dumps."""
    if url.endswith("multistream.xml.bz2"):
        return url[: -len(".xml.bz2")] + "-index.txt.bz2"
    return None


def plan_ranges(url: str, target_bytes: int) -> list[tuple[int, int]]:
    """``[(start, end), …]`` byte ranges covering the file, each starting at a bz2 stream."""
    fs, path = storage.get_fs(url)
    size = int(fs.size(path) or 0)
    if size <= target_bytes:
        return [(0, size)]
    index = index_url(url)
    with fs.open(path, "rb") as f:
        if index and storage.exists(index):
            starts = _index_starts(index, url, size)
            cuts = _group(starts, target_bytes)
            for cut in cuts:
                f.seek(cut)
                if not STREAM_MAGIC.match(f.read(10)):
                    raise BadIndexError(
                        f"{storage.redact(index)}: offset {cut} is not the start of a bz2 stream "
                        f"in {storage.redact(url)}; the index belongs to another dump. Download "
                        "the index of this dump, or delete it to have the streams found by scan"
                    )
        else:
            cuts = _probe_cuts(f, size, target_bytes)
    if not cuts:
        log.warning(
            "%s is a single bz2 stream (%d bytes): it cannot be split and is read by one "
            "worker. To spread it over all workers, %s",
            storage.redact(url),
            size,
            SPLIT_HELP,
        )
    bounds = [0, *cuts, size]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def _index_starts(index: str, url: str, size: int) -> list[int]:
    """Distinct stream offsets of an index, checked against the dump's size and order."""
    fs, path = storage.get_fs(index)
    starts: list[int] = []
    with fs.open(path, "rb") as raw, bz2.open(raw, "rb") as lines:
        for n, line in enumerate(lines, 1):
            head = line.split(b":", 1)[0]
            try:
                off = int(head)
            except ValueError:
                raise BadIndexError(
                    f"{storage.redact(index)} line {n}: {line[:80]!r} is not offset:page_id:title"
                ) from None
            if starts and off == starts[-1]:
                continue
            if off <= 0 or off >= size or (starts and off < starts[-1]):
                raise BadIndexError(
                    f"{storage.redact(index)} line {n}: stream offset {off} is "
                    + ("beyond the end of" if off >= size else "out of order in")
                    + f" {storage.redact(url)} ({size} bytes); the index belongs to another "
                    "dump (or the dump is truncated): fetch the matching pair"
                )
            starts.append(off)
    return starts


def _group(starts: list[int], target_bytes: int) -> list[int]:
    cuts: list[int] = []
    last = 0
    for s in starts:
        if s - last >= target_bytes:
            cuts.append(s)
            last = s
    return cuts


def _probe_cuts(f: IO[bytes], size: int, target_bytes: int) -> list[int]:
    """Stream headers found at or after each multiple of ``target_bytes`` (none: one stream)."""
    cuts: list[int] = []
    pos = target_bytes
    while pos < size:
        found = _find_magic(f, pos, min(size, pos + PROBE_BYTES))
        if found is None:
            if not cuts:
                return []  # nothing past the first cut point: treat as one stream
            pos += target_bytes
            continue
        if found >= size:
            break
        cuts.append(found)
        pos = found + target_bytes
    return cuts


def _find_magic(f: IO[bytes], start: int, stop: int) -> int | None:
    f.seek(start)
    buf, base = b"", start
    while base + len(buf) < stop:
        data = f.read(min(_CHUNK, stop - base - len(buf)))
        if not data:
            return None
        buf += data
        m = STREAM_MAGIC.search(buf)
        if m:
            return base + m.start()
        base += len(buf) - 9
        buf = buf[-9:]
    return None


def _decompressed(f: IO[bytes], start: int, end: int, size: int) -> Iterator[bytes]:
    """Decompressed bytes of the bz2 streams in ``[start, end)`` (concatenated)."""
    f.seek(start)
    pos, dec, mid_stream = start, bz2.BZ2Decompressor(), False
    while pos < end:
        data = f.read(min(_CHUNK, end - pos))
        if not data:
            break
        pos += len(data)
        while data:
            out = dec.decompress(data)
            mid_stream = True
            if dec.eof:
                data, dec, mid_stream = dec.unused_data, bz2.BZ2Decompressor(), False
            else:
                data = b""
            if out:
                yield out
    if mid_stream:
        if end >= size or pos < end:
            raise EOFError("Compressed file ended before the end-of-stream marker was reached")
        raise BadIndexError(f"byte {end} is not a bz2 stream boundary")


def dump_header(f: IO[bytes], size: int) -> bytes:
    """The dump's bytes before its first ``<page>`` (``<mediawiki …>`` and ``<siteinfo>``)."""
    buf = b""
    for chunk in _decompressed(f, 0, size, size):
        buf += chunk
        i = buf.find(b"<page>")
        if i >= 0:
            return buf[:i]
        if len(buf) > 64 << 20:
            break
    raise ValueError("no <page> in the first 64 MB of the dump: not a pages-articles dump")


def _range_xml(f: IO[bytes], start: int, end: int, size: int) -> Iterator[bytes]:
    if start > 0:
        yield dump_header(f, size)
    carry, inside, skipping = b"", False, start > 0
    for chunk in _decompressed(f, start, end, size):
        buf = carry + chunk
        if skipping:  # the head of the range finishes a page the previous range owns
            i = buf.find(b"<page>")
            if i < 0:
                carry = buf[-6:]
                continue
            skipping = False
            for m in _PAGE_TAG.finditer(buf, i):
                inside = not m.group(1)
            yield buf[i:]
        else:
            for m in _PAGE_TAG.finditer(buf):
                if m.end() > len(carry):
                    inside = not m.group(1)
            yield chunk
        carry = buf[-6:]
    if end >= size and not skipping:
        return  # the last range holds the dump's own </mediawiki>
    if skipping:
        yield _CLOSE
        return
    yield from _finish_page(f, end, size, carry, inside)
    yield _CLOSE


def _finish_page(f: IO[bytes], end: int, size: int, carry: bytes, inside: bool) -> Iterator[bytes]:
    """The rest of a page that starts before ``end`` (if any) from the following streams."""
    tail = _decompressed(f, end, size, size)
    buf, emitted = carry, len(carry)
    if not inside:  # does a "<page>" straddle the boundary?
        while len(buf) < emitted + 6:
            more = next(tail, None)
            if more is None:
                break
            buf += more
        i = buf.find(b"<page>", max(0, emitted - 5))
        if not 0 <= i < emitted:
            return
        search = i + 6
    else:
        search = max(0, emitted - 6)
    while True:
        j = buf.find(b"</page>", search)
        if j >= 0:
            yield buf[emitted : j + 7]
            return
        yield buf[emitted:]
        more = next(tail, None)
        if more is None:
            return
        keep = buf[-6:]
        buf, emitted, search = keep + more, len(keep), 0


class _ChunkReader(io.RawIOBase):
    def __init__(self, chunks: Iterator[bytes]):
        super().__init__()
        self._chunks, self._buf = chunks, b""

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        while not self._buf:
            nxt = next(self._chunks, None)
            if nxt is None:
                return 0
            self._buf = nxt
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


def read_wiki_range(url: str, source: str, start: int, end: int) -> Iterator[Record]:
    """The records of the pages one range owns (offsets: page ordinals within the range)."""
    fs, path = storage.get_fs(url)
    size = int(fs.size(path) or 0)
    with fs.open(path, "rb") as f:
        reader = io.BufferedReader(_ChunkReader(_range_xml(f, start, end, size)), 1 << 20)
        yield from read_wiki(reader, source)
