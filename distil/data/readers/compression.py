"""Open a possibly compressed file as a binary stream that can be read line by line.

One implementation for every reader of line formats (JSONL, CSV, text): the compression is
told by the name's suffix (``.gz``, ``.bz2``, ``.zst``, ``.xz``) and checked against the first
bytes, so a file named ``.gz`` that is not gzip is an error naming the file, not a parse error
deep inside a codec. The stream returned is buffered (``readline``, iteration over lines,
``read``); a compressed stream that ends in the middle of a frame or member raises
``EOFError``, a corrupt one ``OSError`` (``NotCompressedError`` for the wrong magic bytes), so
callers can tell a truncated download from bad data. A zero-byte file is an empty stream in
every format, as an empty uncompressed file is.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import lzma
from collections.abc import Iterator
from typing import IO

from distil import storage

# suffix -> (name shown in errors, the magic bytes every stream of it starts with)
_MAGIC = {
    ".gz": ("gzip", b"\x1f\x8b"),
    ".bz2": ("bzip2", b"BZh"),
    ".zst": ("zstd", b"\x28\xb5\x2f\xfd"),
    ".xz": ("xz", b"\xfd7zXZ\x00"),
}
SUFFIXES = tuple(_MAGIC)
NAMES = {suffix: kind for suffix, (kind, _) in _MAGIC.items()}
# bytes of a file's start that tell whether it is what its suffix says (``mismatch``)
HEAD_BYTES = max(len(m) for _, m in _MAGIC.values())
# compressed bytes fed to the zstd decoder at a time: bounds what one call can expand to
_ZSTD_CHUNK = 1 << 16


class NotCompressedError(OSError):
    """A file whose name says compressed but whose first bytes are not that format's (an
    ``OSError``, like ``gzip.BadGzipFile``: a corrupt stream to every caller)."""


def compression_of(name: str) -> str | None:
    """The compression suffix of ``name`` (``.gz`` …), or None for an uncompressed name."""
    lower = name.lower()
    return next((s for s in SUFFIXES if lower.endswith(s)), None)


def decompressed(raw: IO[bytes], name: str) -> IO[bytes]:
    """``raw`` (a binary file at its first byte) as a buffered stream of the decompressed bytes
    when ``name`` has a compression suffix, else ``raw`` itself (buffered if it was not)."""
    suffix = compression_of(name)
    if suffix is None:
        return io.BufferedReader(raw) if isinstance(raw, io.RawIOBase) else raw  # type: ignore[arg-type]
    head = _read_head(raw, HEAD_BYTES)
    if not head:
        return io.BytesIO(b"")
    problem = mismatch(name, head)
    if problem:
        raise NotCompressedError(f"{storage.redact(name)} is {problem}")
    stream = Prefixed(head, raw)
    if suffix == ".gz":
        return gzip.GzipFile(fileobj=stream, mode="rb")  # type: ignore[arg-type]
    if suffix == ".bz2":
        return bz2.BZ2File(stream)  # type: ignore[arg-type]
    if suffix == ".xz":
        return lzma.LZMAFile(stream)  # type: ignore[arg-type]
    return io.BufferedReader(_ZstdReader(stream, name), buffer_size=1 << 16)


@contextlib.contextmanager
def open_stream(url: str) -> Iterator[IO[bytes]]:
    """``url`` (any fsspec URL) opened for reading, decompressed by its suffix."""
    fs, path = storage.get_fs(url)
    with fs.open(path, "rb") as raw:
        stream = decompressed(raw, url)
        try:
            yield stream
        finally:
            if stream is not raw:
                stream.close()


def mismatch(name: str, head: bytes) -> str | None:
    """Why a file called ``name`` whose first bytes are ``head`` (``HEAD_BYTES`` of them, fewer
    for a shorter file) is not what its compression suffix says ("named .gz but is not gzip
    data …"); None when it is, or has no such suffix. A zero-byte file is an empty stream, never
    a mismatch."""
    suffix = compression_of(name)
    if suffix is None or not head:
        return None
    kind, magic = _MAGIC[suffix]
    if _starts(head, suffix, magic):
        return None
    return f"named {suffix} but is not {kind} data (it starts with {head[:8]!r})"


def _read_head(raw: IO[bytes], n: int) -> bytes:
    head = b""
    while len(head) < n:
        chunk = raw.read(n - len(head))
        if not chunk:
            break
        head += chunk
    return head


def _starts(head: bytes, suffix: str, magic: bytes) -> bool:
    if head.startswith(magic):
        return True
    # a zstd stream may open with a skippable frame (magic 0x184D2A50..5F, little endian)
    return (
        suffix == ".zst"
        and len(head) >= 4
        and head[0] & 0xF0 == 0x50
        and head[1:4] == b"\x2a\x4d\x18"
    )


class Prefixed(io.RawIOBase):
    """``head`` (bytes already read from ``raw`` to check the format) followed by ``raw``: works
    on streams that cannot seek back (a hashing reader, a socket)."""

    def __init__(self, head: bytes, raw: IO[bytes]):
        super().__init__()
        self._head, self._raw = head, raw

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:  # type: ignore[override]
        if self._head:
            n = min(len(buf), len(self._head))
            buf[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        # read1 where there is one: a buffered decompressor's read of a whole buffer would drop
        # the bytes before a truncation along with the error
        read = getattr(self._raw, "read1", self._raw.read)
        data = read(len(buf))
        buf[: len(data)] = data
        return len(data)


class _ZstdReader(io.RawIOBase):
    """zstd frames (one or several, concatenated) decoded as they are read. zstandard's own
    ``stream_reader`` cannot be iterated by line and ends silently on a truncated frame; this
    reader raises ``EOFError`` when the input ends inside a frame, and ``OSError`` for corrupt
    data."""

    def __init__(self, raw: IO[bytes], name: str):
        import zstandard

        super().__init__()
        self._raw, self._name = raw, storage.redact(name)
        self._codec = zstandard.ZstdDecompressor()
        self._error = zstandard.ZstdError
        self._frame = self._codec.decompressobj()
        self._in_frame = False  # bytes of a frame were fed and its end not yet seen
        self._out = memoryview(b"")
        self._done = False

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:  # type: ignore[override]
        while not self._out and not self._done:
            self._fill()
        n = min(len(buf), len(self._out))
        buf[:n] = self._out[:n]
        self._out = self._out[n:]
        return n

    def _fill(self) -> None:
        data = self._raw.read(_ZSTD_CHUNK)
        if not data:
            if self._in_frame:
                raise EOFError(f"{self._name}: the zstd stream ends inside a frame (truncated)")
            self._done = True
            return
        out = []
        try:
            while data:
                out.append(self._frame.decompress(data))
                self._in_frame = True
                if not self._frame.eof:
                    break
                data = self._frame.unused_data  # the next frame, if the chunk holds one
                self._frame, self._in_frame = self._codec.decompressobj(), False
        except self._error as e:
            raise OSError(f"{self._name}: corrupt zstd data: {e}") from e
        self._out = memoryview(b"".join(out))
