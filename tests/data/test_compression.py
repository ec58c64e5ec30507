"""``distil.data.readers.compression``: every supported compression read line by line, from any
binary file (seekable or not), with truncation, corruption and a wrong suffix told apart."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import uuid

import pytest
import zstandard

from distil import storage
from distil.data.readers.compression import (
    NotCompressedError,
    compression_of,
    decompressed,
    open_stream,
)

LINES = [f'{{"id": {i}, "text": "row {i} {"word " * (i % 50)}"}}\n'.encode() for i in range(3000)]
DATA = b"".join(LINES)


def _zstd_frames(data: bytes) -> bytes:
    # two frames, as zstd --rsyncable or a concatenation of two files writes them
    half = len(data) // 2
    c = zstandard.ZstdCompressor()
    return c.compress(data[:half]) + c.compress(data[half:])


COMPRESS = {
    ".gz": gzip.compress,
    ".bz2": bz2.compress,
    ".xz": lzma.compress,
    ".zst": _zstd_frames,
}


class OneWay(io.RawIOBase):
    """A stream that cannot seek (a hashing reader, a socket), handing out a few bytes a call."""

    def __init__(self, data: bytes):
        super().__init__()
        self._f = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        chunk = self._f.read(min(len(buf), 777))
        buf[: len(chunk)] = chunk
        return len(chunk)


@pytest.mark.parametrize("suffix", [*COMPRESS, ""])
def test_each_compression_reads_line_by_line(suffix):
    data = COMPRESS[suffix](DATA) if suffix else DATA
    assert list(decompressed(io.BytesIO(data), f"r.jsonl{suffix}")) == LINES
    f = decompressed(OneWay(data), f"r.jsonl{suffix.upper()}")  # case does not matter
    assert [f.readline(), f.readline()] == LINES[:2] and f.read() == b"".join(LINES[2:])


@pytest.mark.parametrize("suffix", list(COMPRESS))
def test_truncated_stream_is_an_eof_error_not_fewer_lines(suffix):
    data = COMPRESS[suffix](DATA)
    with pytest.raises(EOFError):
        list(decompressed(io.BytesIO(data[: len(data) * 2 // 3]), f"r.jsonl{suffix}"))


@pytest.mark.parametrize("suffix", list(COMPRESS))
def test_a_file_named_compressed_that_is_not_is_an_error_naming_it(suffix):
    with pytest.raises(NotCompressedError, match=rf"reviews/r\.jsonl\{suffix} is named \{suffix}"):
        decompressed(io.BytesIO(DATA), f"s3://b/reviews/r.jsonl{suffix}")
    assert issubclass(NotCompressedError, OSError)  # what readers already treat as corrupt


def test_corrupt_zstd_data_is_an_os_error():
    data = bytearray(_zstd_frames(DATA))
    data[40:60] = b"\x00" * 20
    with pytest.raises(OSError, match="corrupt zstd data"):
        list(decompressed(io.BytesIO(bytes(data)), "r.jsonl.zst"))


@pytest.mark.parametrize("suffix", [*COMPRESS, ""])
def test_a_zero_byte_file_is_empty_in_every_format(suffix):
    assert list(decompressed(io.BytesIO(b""), f"r.jsonl{suffix}")) == []


def test_zstd_may_open_with_a_skippable_frame():
    skippable = b"\x50\x2a\x4d\x18" + (4).to_bytes(4, "little") + b"meta"
    data = skippable + _zstd_frames(DATA)
    assert list(decompressed(io.BytesIO(data), "r.jsonl.zst")) == LINES


def test_compression_is_told_by_the_last_suffix():
    assert compression_of("a.jsonl.gz") == ".gz" and compression_of("A.CSV.ZST") == ".zst"
    assert compression_of("a.jsonl") is None and compression_of("a.gz.jsonl") is None


def test_open_stream_reads_s3_and_local(tmp_path, s3_url):
    local = tmp_path / "r.jsonl.xz"
    local.write_bytes(lzma.compress(DATA))
    remote = f"{s3_url}/{uuid.uuid4().hex}.csv.zst"
    storage.write_bytes(remote, _zstd_frames(DATA))
    for url in (str(local), remote):
        with open_stream(url) as f:
            assert list(f) == LINES
