"""Input files: the table of formats, format detection, listing (folders, globs) where every file
gets a reader or a refusal, the hashing raw reader, and what a broken compressed stream is
called."""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

from distil import storage
from distil.config import ConfigError
from distil.data.readers import compression

# format -> the name suffixes it is told by (before any compression suffix). The docs' table
# of inputs is checked against this one (tests/data/test_input_docs.py).
SUFFIXES: dict[str, tuple[str, ...]] = {
    "wiki": (".xml",),  # and Wikimedia's split names, e.g. …-pages-articles1.xml-p10p30302.bz2
    "text": (".txt",),
    "jsonl": (".jsonl", ".json", ".ndjson"),
    "csv": (".csv",),
    "tsv": (".tsv",),
    "parquet": (".parquet",),
    "arrow": (".arrow",),  # Arrow IPC; a `datasets` save_to_disk folder is a folder of these
}
FORMATS = tuple(SUFFIXES)
# Formats a file may hold compressed with any of ``compression.SUFFIXES``. Parquet and Arrow
# compress inside the file; a compressed one is refused rather than read to memory.
COMPRESSIBLE = ("wiki", "text", "jsonl", "csv", "tsv")

# Wikimedia names split dumps like ``…pages-articles1.xml-p10p30302.bz2``: ".xml" is not last.
_WIKI_NAME = re.compile(
    r"\.xml([-.][^/]*)?(" + "|".join(re.escape(s) for s in compression.SUFFIXES) + r")$|\.xml$"
)
PARQUET_MAGIC = b"PAR1"

# A `datasets` save_to_disk folder: Arrow files listed by state.json, described by
# dataset_info.json; a DatasetDict adds dataset_dict.json above one such folder per split.
STATE_FILE = "state.json"
INFO_FILE = "dataset_info.json"
DICT_FILE = "dataset_dict.json"

MAX_NAMED = 20  # unreadable files named in the error; the rest are counted


def detect_format(name: str) -> str | None:
    """The format of a file called ``name`` (``FORMATS``), or None when no reader takes it."""
    lower = name.lower()
    if _WIKI_NAME.search(lower):
        return "wiki"
    suffix = compression.compression_of(lower)
    base = lower.removesuffix(suffix) if suffix else lower
    for fmt, suffixes in SUFFIXES.items():
        if base.endswith(suffixes):
            return fmt if suffix is None or fmt in COMPRESSIBLE else None
    return None


def describe_formats() -> str:
    """The readable names, for messages."""
    names = ", ".join(f"{fmt} ({' '.join(SUFFIXES[fmt])})" for fmt in FORMATS)
    names = names.replace("(.arrow)", "(.arrow, datasets save_to_disk folders)")
    packed = " ".join(compression.SUFFIXES)
    return f"{names}; all but parquet and arrow also compressed ({packed})"


@dataclass(frozen=True)
class Refusal:
    """An input file no reader takes, and why."""

    url: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"url": storage.redact(self.url), "reason": self.reason}


class UnreadableInputsError(ConfigError):
    """Input files no reader takes, found before any work; names them (``MAX_NAMED``, then a
    count) and the flag that proceeds without them."""

    def __init__(self, refused: list[Refusal]):
        self.refused = refused
        lines = [f"  {storage.redact(r.url)}: {r.reason}" for r in refused[:MAX_NAMED]]
        if len(refused) > MAX_NAMED:
            lines.append(f"  … and {len(refused) - MAX_NAMED} more")
        n = len(refused)
        super().__init__(
            f"{n} input file{'s' if n > 1 else ''} cannot be read; nothing was read. Remove "
            f"{'them' if n > 1 else 'it'}, or pass --skip-unknown to go on without "
            f"{'them' if n > 1 else 'it'} (the manifest's skipped_inputs lists each):\n"
            + "\n".join(lines)
            + f"\nReadable formats: {describe_formats()}."
        )


@dataclass(frozen=True)
class InputListing:
    """Every input file: ``urls`` have a reader (sorted: a file's place is its shard index),
    ``refused`` do not."""

    urls: list[str]
    refused: list[Refusal]

    def check(self, skip_unknown: bool) -> None:
        """Raise unless every file is readable (or ``skip_unknown``) and one is."""
        if self.refused and not skip_unknown:
            raise UnreadableInputsError(self.refused)
        if not self.urls:
            shown = [storage.redact(r.url) for r in self.refused[:MAX_NAMED]]
            raise FileNotFoundError(f"no readable input files: every one was skipped ({shown})")


def list_inputs(urls: list[str], fmt: str = "auto") -> InputListing:
    """Input file URLs in a stable order: folders are walked, globs expanded, files kept; each
    gets a reader (``detect_format``, or ``fmt`` for all) or a refusal.

    Not inputs, so neither read nor refused: files whose names start with ``_`` or ``.``
    (markers, staging) in a walked folder, the folder's ``manifest.json``, a multistream dump's
    index next to its dump, and the metadata of a ``datasets`` save_to_disk folder (whose
    Arrow files are read in the order its ``state.json`` lists them). A compressed file whose
    first bytes are not its suffix's format, or a Parquet file that does not start as one, is
    refused here, before any work.
    """
    found = [u for url in urls for u in find_files(url)[0]]
    if not found:
        raise FileNotFoundError(f"no input files under {[storage.redact(u) for u in urls]}")
    dupes = sorted(u for u, n in Counter(found).items() if n > 1)
    if dupes:
        raise ValueError(f"input files listed twice: {[storage.redact(u) for u in dupes[:5]]}")
    # a multistream dump's index is how the dump is split, not a text input
    dumps = {u for u in found if u.endswith("multistream.xml.bz2")}
    found = [u for u in found if not _is_index_of(u, dumps)]
    metadata, refused = saved_datasets(found)
    refused_urls = {r.url for r in refused}
    readable: list[str] = []
    check: list[tuple[str, str]] = []  # (url, format) whose first bytes are checked
    for u in found:
        if u in metadata or u in refused_urls:
            continue
        kind = fmt if fmt != "auto" else detect_format(u)
        if kind is None:
            refused.append(Refusal(u, _unknown_reason(u)))
            continue
        readable.append(u)
        if compression.compression_of(u) or kind == "parquet":
            check.append((u, kind))
    bad = {r.url: r for r in _check_heads(check)}
    refused += bad.values()
    readable = [u for u in readable if u not in bad]
    return InputListing(readable, sorted(refused, key=lambda r: r.url))


def find_files(url: str, hidden: Callable[[str], bool] | None = None) -> tuple[list[str], bool]:
    """The file URLs ``url`` names, sorted, and whether it is a folder: a glob's matching files,
    a folder's files (walked; those whose path under it is ``hidden``, by default names
    starting with ``_`` or ``.`` and the folder's ``manifest.json``, left out), or the file
    itself. ``FileNotFoundError`` when there is no such file or folder."""
    hidden = hidden or _hidden
    fs, path = storage.get_fs(url)
    prefix = url.split("://", 1)[0] + "://" if "://" in url else ""
    folder = False
    if any(ch in path for ch in "*?["):
        entries = fs.glob(path, detail=True)
        paths = sorted(p for p, info in entries.items() if info.get("type") != "directory")
    elif fs.isdir(path):
        # one listing call, files only (no per-file request on object storage)
        paths = sorted(p for p in fs.find(path) if not hidden(posixpath.relpath(p, path)))
        folder = True
    elif fs.exists(path):
        paths = [path]
    else:
        raise FileNotFoundError(f"input {storage.redact(url)} does not exist")
    return [prefix + p if prefix else p for p in paths], folder


def _unknown_reason(url: str) -> str:
    lower = posixpath.basename(url).lower()
    suffix = compression.compression_of(lower)
    base = lower.removesuffix(suffix) if suffix else lower
    inner = detect_format(base)
    if suffix and inner:
        return (
            f"{inner} compressed as {suffix}: {inner} files compress inside the file and are "
            "not read through an outer compression; decompress it"
        )
    ext = posixpath.splitext(base)[1] or "no extension"
    return f"no reader for this file type ({ext}{suffix or ''})"


def _check_heads(files: list[tuple[str, str]]) -> list[Refusal]:
    """Files whose first bytes are not what their name says (one ranged read each, concurrent
    on object storage)."""
    by_fs: dict[str, list[tuple[str, str]]] = {}
    for u, kind in files:
        by_fs.setdefault(storage.protocol_of(u), []).append((u, kind))
    out = []
    for group in by_fs.values():
        fs, _ = storage.get_fs(group[0][0])
        paths = [storage.get_fs(u)[1] for u, _ in group]
        heads = fs.cat_ranges(paths, 0, compression.HEAD_BYTES, on_error="return")
        for (u, kind), head in zip(group, heads, strict=True):
            if isinstance(head, BaseException):
                out.append(Refusal(u, f"cannot read its first bytes: {head}"))
                continue
            problem = compression.mismatch(u, head)
            if kind == "parquet" and not compression.compression_of(u):
                problem = _not_parquet(head)
            if problem:
                out.append(Refusal(u, problem))
    return out


def _not_parquet(head: bytes) -> str | None:
    if head.startswith(PARQUET_MAGIC):
        return None
    if not head:
        return "an empty file, not Parquet"
    return f"not a Parquet file (it starts with {head[:8]!r}, not {PARQUET_MAGIC!r})"


def saved_datasets(files: list[str]) -> tuple[set[str], list[Refusal]]:
    """The ``datasets`` save_to_disk folders among ``files`` (URLs): ``(their metadata files,
    refusals)``. A folder's Arrow files are inputs when its ``state.json`` lists them; an Arrow
    file it does not list (e.g. a cache file ``Dataset.map`` wrote there), a listed file that
    is missing, or a folder without ``dataset_info.json`` or with an unreadable ``state.json``
    is refused."""
    present = set(files)
    metadata: set[str] = set()
    refused: list[Refusal] = []
    states = [u for u in files if posixpath.basename(u) == STATE_FILE]
    for state in states:
        folder = posixpath.dirname(state)
        arrows = [u for u in files if posixpath.dirname(u) == folder and u.endswith(".arrow")]
        info = posixpath.join(folder, INFO_FILE)
        listed, problem = _listed_files(state)
        if info not in present:
            problem = f"no {INFO_FILE} beside {STATE_FILE} (an unfinished save_to_disk?)"
        if problem:
            refused += [Refusal(u, f"save_to_disk folder: {problem}") for u in [state, *arrows]]
            metadata.add(info)
            continue
        metadata.update((state, info))
        paths = [posixpath.join(folder, name) for name in listed]
        refused += [
            Refusal(u, f"listed in {STATE_FILE} but missing") for u in paths if u not in present
        ]
        refused += [
            Refusal(u, f"an Arrow file its folder's {STATE_FILE} does not list (a cache file?)")
            for u in arrows
            if u not in paths
        ]
    dataset_folders = {posixpath.dirname(posixpath.dirname(s)) for s in states}
    metadata.update(
        u
        for u in files
        if posixpath.basename(u) == DICT_FILE and posixpath.dirname(u) in dataset_folders
    )
    return metadata, refused


def _listed_files(state: str) -> tuple[list[str], str | None]:
    """The data files a save_to_disk ``state.json`` lists, or why it cannot be read."""
    try:
        listed = [d["filename"] for d in json.loads(storage.read_bytes(state))["_data_files"]]
    except (ValueError, KeyError, TypeError) as e:
        return [], f"unreadable {STATE_FILE} ({type(e).__name__}: {e})"
    if not all(isinstance(n, str) and n and "/" not in n for n in listed):
        return [], f"{STATE_FILE} lists data files that are not file names: {listed[:5]}"
    return listed, None


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

    def readinto(self, buf: Any) -> int:  # type: ignore[override]
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


def _truncation_reason(exc: BaseException) -> tuple[str, str] | None:
    if isinstance(exc, EOFError):
        return "truncated_compressed_stream", str(exc)
    if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError):
        return "corrupt_compressed_stream", str(exc)
    return None
