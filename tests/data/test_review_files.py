"""Reading review files: in ranges (``plan_ranges`` + ``iter_reviews`` per range) gives exactly
the records of reading them whole (same rows, same ``source_row``s, same dead letters, in order)
for JSONL, CSV/TSV (quoted fields spanning lines, CRLF, bad rows, undecodable bytes, unclosed
quotes) and Parquet, on local files and on S3; zst/xz files read line by line; and no single
row (deep JSON, lone surrogates, an int64 overflow, a file name that is not UTF-8) stops a
file: each is a dead letter, or escaped."""

from __future__ import annotations

import gzip
import json
import lzma
import uuid

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from distil import storage
from distil.data.readers.records import DeadLetter
from distil.data.readers.review_files import (
    FileRange,
    Review,
    expand_inputs,
    generated_id,
    iter_reviews,
    plan_ranges,
)

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


def _row(r: Review | DeadLetter) -> int:
    """The row a review or a dead letter was read from."""
    return r.source_row if isinstance(r, Review) else r.offset


def _records(source) -> list:
    return list(iter_reviews(source, "text", "id", "auto", KEEP))


def _by_ranges(url: str, size: int, split: int) -> tuple[list, list[FileRange]]:
    ranges = plan_ranges(url, size, split)
    return [r for part in ranges for r in _records(part)], ranges


def _check_split(url: str, size: int, splits=(97, 1_000, 4_096)) -> None:
    whole = _records(url)
    assert len(whole) > 100
    rows = [_row(r) for r in whole]
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


def _rows(url, keep=KEEP) -> list:
    return list(iter_reviews(url, "text", "id", "auto", keep))


@pytest.mark.parametrize(
    "name,pack",
    [
        ("r.jsonl.zst", lambda b: zstandard.ZstdCompressor().compress(b)),
        ("r.jsonl.xz", lzma.compress),
        ("r.csv.zst", lambda b: zstandard.ZstdCompressor().compress(b)),
        ("r.csv.xz", lzma.compress),
    ],
)
def test_zst_and_xz_files_read_every_row(tmp_path, name, pack):
    plain = _csv_bytes(300) if ".csv" in name else _jsonl_bytes(300)
    (tmp_path / name.rsplit(".", 1)[0]).write_bytes(plain)
    (tmp_path / name).write_bytes(pack(plain))
    want = _rows(str(tmp_path / name.rsplit(".", 1)[0]))
    got = _rows(str(tmp_path / name))
    assert len(got) == len(want) > 250
    assert [(_row(r), type(r).__name__, getattr(r, "reason", None)) for r in got] == [
        (_row(r), type(r).__name__, getattr(r, "reason", None)) for r in want
    ]
    assert not any(getattr(r, "reason", "") == "unreadable_file" for r in got)
    # never cut into ranges: a compressed stream has no byte offsets
    assert plan_ranges(str(tmp_path / name), 10**9, 100) == [FileRange(str(tmp_path / name))]


def test_a_truncated_zst_file_ends_with_unreadable_file_after_its_good_rows(tmp_path):
    data = zstandard.ZstdCompressor().compress(_jsonl_bytes(2000))
    path = tmp_path / "cut.jsonl.zst"
    path.write_bytes(data[: len(data) // 2])
    rows = _rows(str(path))
    assert rows[-1].reason == "unreadable_file" and "truncated" in rows[-1].detail
    assert len(rows) > 100  # the rows before the cut are kept


UNCLOSED = (
    b"id,text,stars\n"
    b"r0,fine,1\n"
    b'r1,"a quote that never closes,2\n'
    b"r2,after it,3\n"
    b'r3,"quoted, closed",4\n'
    b'r4,"spans\ntwo lines",5\n'
    b"r5,more,6\n"
    b"r6,last,7\n"
)


def test_csv_unclosed_quote_is_one_dead_letter_and_the_rows_after_it_are_read(tmp_path):
    path = tmp_path / "u.csv"
    path.write_bytes(UNCLOSED)
    rows = _rows(str(path))
    # 7 rows in the file (one of them spans two lines): 6 scored + 1 dead letter, none merged
    assert [(_row(r), getattr(r, "id", None)) for r in rows if hasattr(r, "text")] == [
        (0, "r0"), (2, "r2"), (3, "r3"), (4, "r4"), (5, "r5"), (6, "r6")
    ]  # fmt: skip
    (dead,) = [r for r in rows if not hasattr(r, "text")]
    start = UNCLOSED.index(b"r1,")
    end = UNCLOSED.index(b"r2,")
    assert (dead.offset, dead.reason) == (1, "unclosed_quote")
    assert f"bytes [{start}, {end})" in dead.detail and dead.raw.startswith('r1,"a quote')
    assert next(r for r in rows if getattr(r, "id", "") == "r4").text == "spans\ntwo lines"
    assert all("\n" not in r.text for r in rows if hasattr(r, "text") and r.id != "r4")


def test_csv_quote_open_to_the_end_of_the_file(tmp_path):
    path = tmp_path / "end.csv"
    path.write_bytes(b'id,text\nr0,ok\nr1,"open\nr2,b\nr3,c\n')
    rows = _rows(str(path), ())
    assert [(_row(r), getattr(r, "reason", r.id)) for r in rows] == [
        (0, "r0"), (1, "unclosed_quote"), (2, "r2"), (3, "r3")
    ]  # fmt: skip
    assert "bytes [14, 23)" in rows[1].detail
    # the last line alone, open to the end
    path.write_bytes(b'id,text\nr0,ok\nr1,"open')
    assert [getattr(r, "reason", r.id) for r in _rows(str(path), ())] == ["r0", "unclosed_quote"]


def test_csv_with_unclosed_quotes_reads_the_same_in_ranges(tmp_path):
    body = b"".join(
        b'r%d,"never closed %d,1\n' % (i, i) if i % 37 == 5 else b"r%d,review %d,2\n" % (i, i)
        for i in range(1500)
    )
    path = tmp_path / "many.csv"
    path.write_bytes(b"id,text,stars\n" + body)
    whole = _rows(str(path))
    assert len(whole) == 1500
    assert sum(getattr(r, "reason", "") == "unclosed_quote" for r in whole) == 41
    for split in (500, 4_096):
        ranges = plan_ranges(str(path), path.stat().st_size, split)
        assert len(ranges) > 3
        assert [r for part in ranges for r in _rows(part)] == whole


def test_csv_field_longer_than_csv_default_limit_is_a_row(tmp_path):
    long = "word " * 60_000  # 300 KB: csv's own limit is 128 KiB a field
    path = tmp_path / "long.csv"
    path.write_bytes(f'id,text\nr0,"{long}"\nr1,short\n'.encode())
    assert [(r.id, len(r.text)) for r in _rows(str(path), ())] == [("r0", len(long)), ("r1", 5)]


def test_poison_rows_are_dead_letters_and_every_string_is_valid_utf8(tmp_path):
    lines = [
        '{"id": "deep", "text": "t", "x": ' + "[" * 50_000 + "]" * 50_000 + "}",
        '{"id": "sur\\ud800", "text": "a lone surrogate in the id"}',
        '{"id": "huge", "text": "an int64 overflow", "stars": 99999999999999999999}',
        '{"id": "digits", "text": "too many digits", "stars": ' + "9" * 5000 + "}",
        '{"id": "neg", "text": "the int64 minimum fits", "stars": -9223372036854775808}',
        '{"id": "ok", "text": "fine", "stars": 3}',
    ]
    path = tmp_path / "poison.jsonl"
    path.write_text("\n".join(lines) + "\n")
    rows = _rows(str(path))
    got = {_row(r): (getattr(r, "reason", "scored"), r.id) for r in rows}
    assert got == {
        0: ("malformed_line", None),
        1: ("bad_id", "sur\\ud800"),
        2: ("bad_column", "huge"),
        3: ("malformed_line", None),
        4: ("scored", "neg"),
        5: ("scored", "ok"),
    }
    assert "nested too deeply" in rows[0].detail and "int64 range" in rows[2].detail
    # a CSV id and a kept string column with bytes that are not UTF-8
    csv_path = tmp_path / "bytes.csv"
    csv_path.write_bytes(b"id,text,product\nc\xff1,fine,p\nc2,fine,p\xfe\nc3,fine,p3\n")
    rows = _rows(str(csv_path), (("product", "string"),))
    assert [(getattr(r, "reason", "scored"), r.id) for r in rows] == [
        ("bad_id", "c\\xff1"), ("bad_column", "c2"), ("scored", "c3")
    ]  # fmt: skip
    for r in rows:
        for value in vars(r).values():
            if isinstance(value, str):
                value.encode("utf-8")  # what Beam's coders and Parquet do


def test_a_file_name_that_is_not_utf8_is_read_and_named_escaped(tmp_path):
    name = b"caf\xe9.jsonl".decode("utf-8", "surrogateescape")  # as os.listdir gives it
    (tmp_path / name).write_text('{"text": "a review"}\n{"id": "x", "text": ""}\n')
    (url,) = expand_inputs([str(tmp_path)])
    good, dead = _rows(url, ())
    assert good.source_file == dead.source == f"{tmp_path}/caf\\xe9.jsonl"
    assert good.text == "a review" and dead.reason == "empty_text"
    assert good.id == generated_id(url, 0)  # stable, from the escaped name
    good.id.encode("utf-8")
