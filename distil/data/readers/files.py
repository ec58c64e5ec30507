"""Input files: format detection, listing (folders, globs), the hashing raw reader and
decompression, and what a broken compressed stream is called."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import posixpath
import re
from collections import Counter
from typing import IO

from distil import storage

FORMATS = ("wiki", "text", "jsonl", "parquet")
_SUFFIXES = {
    "wiki": (".xml.bz2", ".xml.gz", ".xml"),
    "text": (".txt", ".txt.gz", ".txt.bz2"),
    "jsonl": (".jsonl", ".jsonl.gz", ".jsonl.bz2", ".json", ".ndjson"),
    "parquet": (".parquet",),
}


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
    # a multistream dump's index is how the dump is split, not a text input
    dumps = {u for u in out if u.endswith("multistream.xml.bz2")}
    out = [u for u in out if not _is_index_of(u, dumps)]
    if not out:
        raise FileNotFoundError(f"no input files under {[storage.redact(u) for u in urls]}")
    dupes = sorted(u for u, n in Counter(out).items() if n > 1)
    if dupes:
        raise ValueError(f"input files listed twice: {dupes[:5]}")
    return out


def _is_index_of(url: str, dumps: set[str]) -> bool:
    suffix = "-index.txt.bz2"
    return url.endswith("multistream" + suffix) and url[: -len(suffix)] + ".xml.bz2" in dumps


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
