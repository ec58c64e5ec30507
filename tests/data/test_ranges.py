"""``distil.data.readers.ranges`` for ``distil prepare``: a big JSON lines, CSV/TSV or Parquet
file read as ranges gives exactly the records of reading it whole (same texts, offsets, ids,
dead letters), and a run that splits its files writes the bytes of one that does not, with
deduplication on or off. (The scoring stage's reading of the same ranges:
tests/data/test_review_files.py.)"""

from __future__ import annotations

import gzip
import json
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from prepare_corpus import output_bytes, paragraph

from distil.data.config import PrepareConfig
from distil.data.prepare_ranges import plan_units, run_serial
from distil.data.readers import FileRange, read_records
from distil.data.readers.ranges import plan_ranges


def _jsonl(rng: random.Random, n: int) -> bytes:
    out = []
    for i in range(n):
        if i % 13 == 4:
            out.append(b"")  # blank: not a record
        if i % 17 == 5:
            out.append(b"{broken")
        elif i % 19 == 6:
            out.append(b'{"text": "caf\xe9"}')
        elif i % 23 == 7:
            out.append(json.dumps({"text": "x" * 5000}).encode())  # over max_line_bytes
        else:
            out.append(json.dumps({"id": f"j{i}", "text": paragraph(rng, 2)}).encode())
    return b"\n".join(out) + b"\n"


def _csv(rng: random.Random, n: int, sep: str = ",") -> bytes:
    rows = [f"id{sep}text"]
    for i in range(n):
        text = paragraph(rng, 2)
        if i % 11 == 3:
            rows.append(f'c{i}{sep}"{text}\nsecond line, ""quoted""\n\nthird"')
        elif i % 29 == 8:
            rows.append(f'c{i}{sep}"never closed')
        elif i % 31 == 9:
            rows.append(f"c{i}{sep}a{sep}b")
        else:
            rows.append(f"c{i}{sep}{text}")
    return ("\r\n".join(rows) + "\r\n").encode()


def _read(part: FileRange | str, fmt: str) -> list:
    url = part if isinstance(part, str) else part.url
    p = None if isinstance(part, str) else part
    return list(read_records(url, "f", fmt, id_column="id", max_line_bytes=2048, part=p))


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "tsv", "parquet"])
def test_ranges_read_the_records_of_the_whole_file(tmp_path, fmt):
    rng = random.Random(3)
    path = tmp_path / f"f.{fmt}"
    if fmt == "jsonl":
        path.write_bytes(_jsonl(rng, 300))
    elif fmt in ("csv", "tsv"):
        path.write_bytes(_csv(rng, 300, "\t" if fmt == "tsv" else ","))
    else:
        texts = [paragraph(rng, 2) if i % 37 else "" for i in range(300)]
        table = pa.table({"id": [f"p{i}" for i in range(300)], "text": texts})
        pq.write_table(table, path, row_group_size=16)
    whole = _read(str(path), fmt)
    assert len(whole) > 250 and any(r.__class__.__name__ == "DeadLetter" for r in whole)
    size = path.stat().st_size
    for split in (500, 4_000, size // 3):
        parts = plan_ranges(str(path), size, split, fmt)
        assert len(parts) > 1, split
        assert [r for part in parts for r in _read(part, fmt)] == whole, split


def test_a_missing_text_column_is_one_record_whichever_ranges_read_it(tmp_path):
    rows = "id,body\r\n" + "".join(f"{i},text {i}\r\n" for i in range(200))
    (tmp_path / "f.csv").write_text(rows)
    table = pa.table({"id": list(range(200)), "body": ["x"] * 200})
    pq.write_table(table, tmp_path / "f.parquet", row_group_size=10)
    for name, fmt in (("f.csv", "csv"), ("f.parquet", "parquet")):
        url = str(tmp_path / name)
        parts = plan_ranges(url, (tmp_path / name).stat().st_size, 200, fmt)
        assert len(parts) > 2
        recs = [r for part in parts for r in _read(part, fmt)]
        assert (
            [r.reason for r in recs]
            == ["missing_text_column"]
            == [r.reason for r in _read(url, fmt)]
        )


def _corpus(root) -> None:
    rng = random.Random(11)
    root.mkdir()
    (root / "a.jsonl").write_bytes(_jsonl(rng, 200))
    (root / "b.csv").write_bytes(_csv(rng, 150))
    texts = [paragraph(rng, 2) for _ in range(150)]
    texts[100] = texts[7]  # an exact duplicate within a file, in another range
    pq.write_table(pa.table({"text": texts}), root / "c.parquet", row_group_size=8)
    first = (root / "a.jsonl").read_bytes().splitlines()[0]  # a copy of a.jsonl's first line
    (root / "d.jsonl.gz").write_bytes(gzip.compress(first + b"\n"))
    array = [{"text": paragraph(rng, 2)} for _ in range(40)]
    (root / "e.json").write_text(json.dumps(array, indent=1))


@pytest.mark.parametrize("dedup", [True, False])
def test_a_run_over_ranges_writes_the_bytes_of_a_run_over_whole_files(tmp_path, dedup):
    _corpus(tmp_path / "in")
    kw = {"input": str(tmp_path / "in"), "dedup": dedup}
    split = PrepareConfig(**kw, output=str(tmp_path / "split"), range_bytes=3_000)
    units = {u["name"]: len(u["ranges"]) for u in plan_units(split).units}
    # the uncompressed record files are split; a compressed file and a JSON array are not
    assert units["a.jsonl"] > 3 and units["b.csv"] > 3 and units["c.parquet"] > 3
    assert units["d.jsonl.gz"] == 1 and units["e.json"] == 1
    run_serial(split)
    run_serial(PrepareConfig(**kw, output=str(tmp_path / "whole")))
    got, want = output_bytes(str(tmp_path / "split")), output_bytes(str(tmp_path / "whole"))
    assert got == want
    manifest = json.loads(want["manifest.json"])
    assert manifest["dead_letter"]["count"] > 10
    if dedup:
        assert manifest["dedup"]["exact_removed"] >= 2  # the planted copy, d.jsonl.gz's line
    # a rerun with other ranges reuses every finished shard
    again = run_serial(PrepareConfig(**kw, output=str(tmp_path / "split"), range_bytes=5_000))
    assert again["fingerprint"] == manifest["fingerprint"]
