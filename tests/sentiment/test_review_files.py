"""Reading a review file in ranges (``plan_ranges`` + ``iter_reviews`` per range) gives exactly
the records of reading it whole: same rows, same ``source_row``s, same dead letters, in order,
for JSONL, CSV/TSV (quoted fields spanning lines, CRLF, bad rows, undecodable bytes) and
Parquet, on local files and on S3."""

from __future__ import annotations

import gzip
import json
import uuid

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from distil import storage
from distil.sentiment.review_files import FileRange, iter_reviews, plan_ranges

KEEP = (("stars", "int64"),)


def _jsonl_bytes(n: int) -> bytes:
    lines = []
    for i in range(n):
        if i % 17 == 3:
            lines.append(b"")  # blank: not a record
        if i % 23 == 5:
            lines.append(b"{not json")
        elif i % 29 == 7:
            lines.append(b'{"id": "x", "text": "caf\xff bytes"}')  # not UTF-8
        elif i % 31 == 9:
            lines.append(json.dumps({"id": f"r{i}", "text": "  "}).encode())  # empty text
        else:
            rec = {"id": f"r{i}", "text": f"review {i} " + "word " * (i % 40), "stars": i % 5}
            lines.append(json.dumps(rec).encode())
    return b"\n".join(lines) + b"\n"


def _csv_bytes(n: int, delimiter: str = ",", newline: str = "\r\n") -> bytes:
    rows = [f"id{delimiter}text{delimiter}stars"]
    for i in range(n):
        if i % 19 == 4:
            text = '"a quoted review\nthat spans\nthree lines, with a ""quote"""'
        elif i % 23 == 6:
            rows.append(f"bad{i}{delimiter}too{delimiter}many{delimiter}fields")
            continue
        else:
            text = f"review {i} " + "word " * (i % 30)
        rows.append(f"r{i}{delimiter}{text}{delimiter}{i % 5}")
    return (newline.join(rows) + newline).encode()


def _records(source) -> list:
    return list(iter_reviews(source, "text", "id", "auto", KEEP))


def _by_ranges(url: str, size: int, split: int) -> tuple[list, list[FileRange]]:
    ranges = plan_ranges(url, size, split)
    return [r for part in ranges for r in _records(part)], ranges


def _check_split(url: str, size: int, splits=(97, 1_000, 4_096)) -> None:
    whole = _records(url)
    assert len(whole) > 100
    rows = [r.source_row for r in whole]
    assert rows == sorted(rows) and len(set(rows)) == len(rows)
    for split in splits:
        got, ranges = _by_ranges(url, size, split)
        assert len(ranges) > 1, (split, ranges)
        assert [r.first_row for r in ranges] == sorted(r.first_row for r in ranges)
        assert got == whole, f"split {split}: ranges {ranges[:3]}…"
    # a file no bigger than the split is one range
    assert plan_ranges(url, size, size) == [FileRange(url)]


@pytest.mark.parametrize(
    "name,data",
    [
        ("reviews.jsonl", _jsonl_bytes(400)),
        ("reviews.csv", _csv_bytes(400)),
        ("reviews.tsv", _csv_bytes(400, "\t", "\n")),
    ],
)
def test_line_formats_read_in_ranges_equal_the_whole_file(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    _check_split(str(path), len(data))


def test_parquet_splits_between_row_groups(tmp_path):
    n = 2_000
    table = pa.table(
        {
            "id": [f"r{i}" if i % 50 else None for i in range(n)],  # some ids generated
            "text": [f"review {i} " + "x" * (i % 60) if i % 97 else "" for i in range(n)],
            "stars": [i % 5 for i in range(n)],
        }
    )
    path = tmp_path / "reviews.parquet"
    pq.write_table(table, path, row_group_size=150)
    size = path.stat().st_size
    whole = _records(str(path))
    assert len(whole) == n
    got, ranges = _by_ranges(str(path), size, size // 5)
    assert 3 <= len(ranges) <= 14 and got == whole
    # every cut is between row groups, each range names the row of its first group
    assert all(r.first_row == r.start * 150 for r in ranges)


def test_compressed_and_unreadable_files_are_one_range(tmp_path):
    data = _jsonl_bytes(300)
    gz = tmp_path / "reviews.jsonl.gz"
    gz.write_bytes(gzip.compress(data))
    assert plan_ranges(str(gz), 10**9, 10) == [FileRange(str(gz))]
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 not really parquet" * 100)
    assert plan_ranges(str(broken), 2_300, 100) == [FileRange(str(broken))]
    (dead,) = _records(str(broken))
    assert dead.reason == "unreadable_file"


def test_ranges_on_s3_read_the_same_records(s3_server):
    data = _csv_bytes(600)
    url = f"s3://{s3_server.bucket}/ranges-{uuid.uuid4().hex[:8]}/reviews.csv"
    storage.write_bytes(url, data)
    _check_split(url, len(data), splits=(2_000,))
